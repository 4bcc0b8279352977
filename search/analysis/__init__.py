"""The result tools: what a run or its retrain says, read from the run directory. The
commands (`search.commands`) are thin layers over these.

    front.py       the Pareto front as a table (`evonorm front`)
    plots.py       the figure of a run (`evonorm plot`)
    drawing.py     a layer's computation graph (`evonorm show DIR ID --graph`)
    accounting.py  where a run's worker time went (`evonorm show DIR`)
    retrain.py     the fair comparison of front layers and baselines (`evonorm retrain`)
    report.py      the retrain's table, paired verdicts and lr trials (`evonorm show DIR --trials`)
    stats.py       paired Student-t intervals and the edges of a tuned rate's range
    studies.py     a run as an Optuna study (`evonorm to-optuna`)
"""
