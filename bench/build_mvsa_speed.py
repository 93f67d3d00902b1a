"""Seconds to build MVSA-Single from the raw release (every image fully decoded), with 1 and with all processes.

python bench/build_mvsa_speed.py [--raw_dir DIR]   (default: $MVSA_SINGLE_DIR)
"""

import argparse
import os
import tempfile
import time

from mmsa.data import build_mvsa, save_mvsa


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw_dir", default=os.environ.get("MVSA_SINGLE_DIR"))
    args = parser.parse_args()
    if not args.raw_dir:
        parser.error("--raw_dir or MVSA_SINGLE_DIR is required")
    cores = os.cpu_count() or 1
    print(f"cores: {cores}")
    for num_proc in sorted({1, cores}):
        start = time.perf_counter()
        dataset, report = build_mvsa(args.raw_dir, num_proc=num_proc, return_report=True)
        built = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            save_mvsa(dataset, report, tmp)
        total = time.perf_counter() - start
        print(f"num_proc={num_proc}: build {built:.1f} s, build + save_to_disk {total:.1f} s, {report.kept} posts")


if __name__ == "__main__":
    main()
