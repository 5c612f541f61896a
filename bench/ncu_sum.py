"""Sum `gpu__time_duration.sum` over the kernels of an `ncu --csv` report (stdin); prints microseconds."""

import csv
import sys

rows = list(csv.reader(line for line in sys.stdin if line.startswith('"')))
header, data = rows[0], rows[1:]
col = header.index("Metric Value")
total = sum(float(r[col].replace(",", "")) for r in data if r[col] not in ("", "Metric Value"))
print(f"{len(data)} kernels, {total / 1e3:.1f} us in all")
