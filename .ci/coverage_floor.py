"""Fails (exit 1) when a module of the package is covered below the floor (default 75%) by
the test run that wrote .coverage (.ci/run: the fast suite), naming each such module.
Usage: python .ci/coverage_floor.py [FLOOR] [DATA_FILE]"""
import sys

import coverage


def below(floor: float, data_file: str = ".coverage") -> list[tuple[str, float]]:
    cov = coverage.Coverage(data_file=data_file)
    cov.load()
    low = []
    for path in sorted(cov.get_data().measured_files()):
        _, statements, _, missing, _ = cov.analysis2(path)
        if statements:
            percent = 100.0 * (len(statements) - len(missing)) / len(statements)
            if percent < floor:
                low.append((path, percent))
    return low


if __name__ == "__main__":
    floor = float(sys.argv[1]) if len(sys.argv) > 1 else 75.0
    low = below(floor, *sys.argv[2:3])
    for path, percent in low:
        print(f"coverage: {path} {percent:.0f}% < {floor:.0f}%", file=sys.stderr)
    sys.exit(1 if low else 0)
