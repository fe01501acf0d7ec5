#!/usr/bin/env python3
"""Summarises scripts/bench's runs: a table on stdout and a JSON file.

Usage: bench-report.py RAW.tsv OUT.json MACHINE_JSON COMMAND

RAW.tsv has one line per timed run: size job tool run wall user sys rss_kb exit bytes data.
For every job x tool: median wall time, median CPU (user+sys), min/max wall, peak RSS (the
largest of the runs), exit codes, median bytes saved (dedupe). Ratios are against the
job's cyrkit row: a peer's median over cyrkit's ("cyrkit Nx faster"), and cyrkit's median
over the floor's ("cyrkit at Nx the floor").
"""
import json
import statistics
import sys


def main():
    raw, out, machine, command = sys.argv[1:5]
    groups = {}
    for line in open(raw):
        f = line.rstrip("\n").split("\t")
        if len(f) < 11:
            continue
        size, job, tool, _run, wall, user, sys_, rss, code, nbytes, data = f[:11]
        g = groups.setdefault((int(size), job, tool), {"data": data, "runs": []})
        g["runs"].append((float(wall), float(user) + float(sys_), int(rss), int(code),
                          int(nbytes) if nbytes else None))
    results = []
    for (size, job, tool), g in groups.items():
        walls = [r[0] for r in g["runs"]]
        saved = [r[4] for r in g["runs"] if r[4] is not None]
        results.append({
            "size": size, "job": job, "tool": tool, "data": g["data"], "runs": len(walls),
            "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "cpu_median_s": statistics.median(r[1] for r in g["runs"]),
            "rss_kb": max(r[2] for r in g["runs"]),
            "exit_codes": sorted({r[3] for r in g["runs"]}),
            "bytes_saved": int(statistics.median(saved)) if saved else None,
        })
    kit = {(r["size"], r["job"]): r["median_s"] for r in results if r["tool"].startswith("cyrkit")}
    for r in results:
        k = kit.get((r["size"], r["job"]))
        r["ratio"] = None
        r["ratio_text"] = ""
        if k and not r["tool"].startswith("cyrkit") and k > 0 and r["median_s"] > 0:
            if r["tool"].startswith("floor"):
                r["ratio"] = k / r["median_s"]
                r["ratio_text"] = f"cyrkit at {r['ratio']:.2f}x the floor"
            else:
                r["ratio"] = r["median_s"] / k
                r["ratio_text"] = (f"cyrkit {r['ratio']:.2f}x faster" if r["ratio"] >= 1
                                   else f"cyrkit {1 / r['ratio']:.2f}x slower")
    m = json.loads(machine)
    json.dump({"command": command, "machine": m, "results": results}, open(out, "w"), indent=1)

    print(f"\nmachine: {m['cpu']}, {m['nproc']} CPUs, {m['mem_mb']} MB, {m['kernel']}, {m['fs']}; "
          f"load average {m['load_start']} at the start, {m['load_end']} at the end")
    print(f"command: {command}\n")
    print("| messages | job | tool | median s | min-max s | CPU s | runs | ratio | peak RSS MB | bytes saved |")
    print("|---:|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        bad = "" if r["exit_codes"] == [0] else f" (exit {r['exit_codes']})"
        saved = f"{r['bytes_saved']:,}" if r["bytes_saved"] is not None else ""
        print(f"| {r['size']:,} | {r['job']} | {r['tool']}{bad} | {r['median_s']:.2f} | "
              f"{r['min_s']:.2f}-{r['max_s']:.2f} | {r['cpu_median_s']:.2f} | {r['runs']} | "
              f"{r['ratio_text']} | {r['rss_kb'] / 1024:.0f} | {saved} |")
    print(f"\n(data per job: {', '.join(sorted({r['job'] + ': ' + r['data'] for r in results}))})")
    print(f"results: {out}; every run: {raw}")


if __name__ == "__main__":
    main()
