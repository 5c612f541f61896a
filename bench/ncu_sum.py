"""Sum `gpu__time_duration.sum` per kernel name over an `ncu --csv` report (stdin); prints microseconds."""

import csv
import sys
from collections import defaultdict

rows = list(csv.reader(line for line in sys.stdin if line.startswith('"')))
header, data = rows[0], rows[1:]
col, name = header.index("Metric Value"), header.index("Kernel Name")
per_name: dict[str, list[float]] = defaultdict(list)
for r in data:
    per_name[r[name].split("(")[0][:70]].append(float(r[col].replace(",", "")) / 1e3)
for kernel, us in sorted(per_name.items(), key=lambda kv: -sum(kv[1])):
    print(f"{len(us):4d} x {kernel:70s} {sum(us):9.1f} us in all, {sum(us) / len(us):7.2f} us each")
print(f"total {sum(sum(v) for v in per_name.values()):.1f} us over {len(data)} kernels")
