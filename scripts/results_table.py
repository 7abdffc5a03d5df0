#!/usr/bin/env python3
"""The results table: every method and full fine-tuning on every task, same step budget, seeds.

Runs `peft-train` for each (task, method, seed) of configs/results/plan.json — SpamAssassin and
Brown 15-genre classification and Moby Dick perplexity on the bundled tiny GPT-2, MNIST-ViT ->
Fashion-MNIST — several runs at once, one thread each. Nothing is chosen on the test split:
every task holds a validation split out of its training data; each run keeps the delta of its
best validation evaluation and the test split scores only that one; and each method's learning
rate is the value of its grid with the best validation score on its family's selection task
(seed 1), found first. Each run's directory keeps its log and a result.json; a finished run with
the same command is not run again, so an interrupted table continues where it stopped (--force
reruns everything). Then writes:

  docs/results.md    one table per task: method, trainable %, score ± spread over seeds,
                     score / full fine-tuning's, delta bytes, step time, peak memory
  docs/results.json  every run
  docs/results-runs.jsonl  the ledger: one record per finished run, with the commit and CPU it ran on
  docs/results.svg, docs/results.png   score against trainable parameters (gnuplot)
  docs/results-curves.svg, .png        validation score against steps, seed 1 of each method

--base FAMILY=DIR runs a family's tasks on another pretrained model; --name STEM names the outputs
(for example: --base gpt2=examples/models/gpt2-en-6m --name results-gpt2-en-6m
--runs runs/results-gpt2-en-6m).

  scripts/results_table.py [--jobs 2] [--tasks spam,brown] [--methods LoRA,BitFit] [--seeds 3]
                           [--base FAMILY=DIR] [--name STEM] [--runs DIR] [--ledger FILE]
"""
import argparse
import concurrent.futures as futures
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The table's criterion: NEAR_FULL of full fine-tuning's score with at most MAX_TRAINABLE_PCT % trainable.
NEAR_FULL = 0.95
MAX_TRAINABLE_PCT = 2.0


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def method_config(plan_entry, task_name, task):
    """The method's config for the task (or else its backbone family), with the task type set."""
    m = plan_entry.get(task_name, plan_entry[task["family"]])
    if m == "full":
        return "full"
    m = dict(m)
    m["task_type"] = "CAUSAL_LM" if task["metric"] == "perplexity" else "SEQ_CLS"
    return m


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def atomic_write(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def better(metric, a, b):
    """Whether score a beats score b (perplexity: lower is better)."""
    return a < b if metric == "perplexity" else a > b


def best_lr(scores, metric):
    """The learning rate of the best score; ties go to the smaller rate."""
    values = sorted(scores)
    best = values[0]
    for lr in values[1:]:
        if better(metric, scores[lr], scores[best]):
            best = lr
    return best


def parse_run(run_dir, stdout, task):
    """The numbers of one finished run: the test score of the delta chosen on validation, the best
    validation score, parameter counts, step time, delta size."""
    evals, step_ms, test = [], [], None
    with open(os.path.join(run_dir, "log.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "eval" in rec:
                evals.append({**rec["eval"], "step": rec.get("step")})
            elif "test" in rec:
                test = rec
            elif "step_ms" in rec:
                step_ms.append(rec["step_ms"])
    if not evals or test is None:
        raise RuntimeError(f"{run_dir}/log.jsonl: no validation evaluation or no test score "
                           "(does the task's config give data.validation_fraction and an eval set?)")
    m = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", stdout)
    if m:
        trainable = int(m.group(1).replace(",", ""))
    else:
        m = re.search(r"full training: (\d+) parameters", stdout)
        if not m:
            raise RuntimeError(f"{run_dir}: peft-train printed no parameter count")
        trainable = int(m.group(1))
    metric = task["metric"]
    best = evals[0]
    for e in evals[1:]:
        if better(metric, e[metric], best[metric]):
            best = e
    return {"score": test["test"][metric], "test": test["test"], "selected_step": test["selected_step"],
            "curve": [[e["step"], e[metric]] for e in evals if e["step"] is not None],
            "validation_score": best[metric], "trainable_params": trainable,
            "step_ms": statistics.median(step_ms[1:] or step_ms),  # the first window holds warm-up
            "delta_bytes": directory_bytes(os.path.join(run_dir, "final"))}


@functools.lru_cache(maxsize=None)
def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def inputs_fingerprint(config_path, base=None):
    """SHA-256 over what a run's numbers depend on besides the code and its command: the run config,
    the base model's files (`base`, else the config's model) and every data file the config names."""
    with open(os.path.join(ROOT, config_path), encoding="utf-8") as f:
        cfg = json.load(f)
    model_dir = base or cfg["model"]
    files = [config_path] + [os.path.join(model_dir, n) for n in ("config.json", "model.safetensors", "tokenizer.json")]
    files += [v for v in cfg.get("data", {}).values() if isinstance(v, str) and os.path.isfile(os.path.join(ROOT, v))]
    h = hashlib.sha256()
    for rel in files:
        full = os.path.join(ROOT, rel)
        if os.path.isfile(full):
            h.update(f"{rel}\0{file_sha256(full)}\n".encode())
    return h.hexdigest()


class Ledger:
    """Every finished run of one table, a JSON line each, so that a table spans sessions and machines.
    A line is appended once its run has finished; a torn last line (a killed process) is skipped."""

    def __init__(self, path):
        self.path, self.lock, self.records = path, threading.Lock(), {}
        self.torn = False  # the file ends inside a line: the next record starts a new one
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                self.torn = f.read(1) != b"\n"
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line)
                        self.records[self.key(rec["cmd"], rec["inputs"])] = rec
                    except (ValueError, KeyError) as e:
                        print(f"{path}:{n}: skipped an unreadable record ({e})", file=sys.stderr)

    @staticmethod
    def key(cmd, inputs):
        return json.dumps(cmd) + "\0" + inputs

    def get(self, job):
        return self.records.get(self.key(job["cmd"], job["inputs"]))

    def add(self, rec):
        with self.lock:
            self.records[self.key(rec["cmd"], rec["inputs"])] = rec
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self.torn else "") + json.dumps(rec, sort_keys=True) + "\n")
                self.torn = False
                f.flush()
                os.fsync(f.fileno())


def finished(job, ledger):
    """The record of an identical finished run (same command and inputs) on disk or in the ledger, or None."""
    result_path = os.path.join(ROOT, job["dir"], "result.json")
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("cmd") == job["cmd"] and rec.get("inputs") == job["inputs"]:
            return rec
    return ledger.get(job)


def provenance():
    """The commit (with -dirty for uncommitted changes) and CPU a run ran on: step times and peak
    memory are of that machine."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"commit": commit, "cpu": cpu, "cores": os.cpu_count()}


def run_one(job, args):
    """Runs one peft-train job unless an identical finished run is on disk; returns its record."""
    run_dir, cmd = os.path.join(ROOT, job["dir"]), job["cmd"]
    result_path = os.path.join(run_dir, "result.json")
    done = None if args.force and job["dir"] not in args.ran else finished(job, args.ledger)
    if done:
        return done
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_job))
    with open(os.path.join(run_dir, "stdout.txt"), "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(os.path.join(run_dir, "stdout.txt"), encoding="utf-8") as f:
        stdout = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-2000:]}")
    rec = {"task": job["task"], "method": job["method"], "seed": job["seed"], "lr": job["lr"], "cmd": cmd,
           "inputs": job["inputs"], **args.provenance,
           "peak_rss_mib": usage.ru_maxrss / 1024.0, **parse_run(run_dir, stdout, job["task_spec"])}
    atomic_write(result_path, json.dumps(rec, indent=1) + "\n")
    args.ledger.add(rec)
    args.ran.add(job["dir"])
    return rec


def run_all(jobs, args):
    """Runs the jobs, args.jobs at once; returns (records, failed jobs). One failure does not stop the others."""
    records, failed = [], []
    with futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        pending = {pool.submit(run_one, j, args): j for j in jobs}
        for done in futures.as_completed(pending):
            j = pending[done]
            try:
                rec = done.result()
                records.append(rec)
                print(f"[{len(records) + len(failed)}/{len(jobs)}] {j['task']:<9} {j['method']:<20} lr {j['lr']:<7g} "
                      f"seed {j['seed']}: test {rec['score']:.4f}, validation {rec['validation_score']:.4f}  "
                      f"({rec['trainable_params']:,} trainable, {rec['step_ms']:.0f} ms/step)", flush=True)
            except Exception as e:
                failed.append(j)
                print(f"FAILED {j['task']} {j['method']} lr {j['lr']:g} seed {j['seed']}: {e}", file=sys.stderr, flush=True)
    return records, failed


def summarize(records, plan, tasks):
    """Per task and method: mean and spread of the score over seeds, and the run's other numbers."""
    rows = {}
    for t in tasks:
        spec = plan["tasks"][t]
        full_params = None
        by_method = {}
        for r in sorted(records, key=lambda r: r["seed"]):  # runs[0] below: seed 1, whatever finished first
            if r["task"] == t:
                by_method.setdefault(r["method"], []).append(r)
        if "full fine-tuning" in by_method:
            full_params = by_method["full fine-tuning"][0]["trainable_params"]
        out = []
        for name in plan["methods"]:
            runs = by_method.get(name)
            if not runs:
                continue
            scores = [r["score"] for r in runs]
            out.append({"method": name, "runs": len(runs), "score": statistics.mean(scores),
                        "spread": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                        "trainable_params": runs[0]["trainable_params"],
                        "trainable_pct": 100.0 * runs[0]["trainable_params"] / full_params if full_params else None,
                        "delta_bytes": runs[0]["delta_bytes"],
                        "step_ms": statistics.median(r["step_ms"] for r in runs),
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)})
        full = next((r for r in out if r["method"] == "full fine-tuning"), None)
        for r in out:
            if full:
                # Higher is better for accuracy; for perplexity the ratio is full FT's over the method's.
                r["vs_full"] = (full["score"] / r["score"] if spec["metric"] == "perplexity"
                                else r["score"] / full["score"])
        rows[t] = out
    return rows


def markdown(rows, plan, args, chosen):
    flags = "".join(f" --base {f}={d}" for f, d in sorted(args.bases.items()))
    flags += f" --name {args.name}" if args.name != "results" else ""
    lines = ["# Results: every method against full fine-tuning", "",
             f"Generated by `scripts/results_table.py --jobs {args.jobs}{flags}` from `configs/results/plan.json` (each",
             "task's settings are below); do not edit by hand." +
             "".join(f" Base of the {f} tasks: `{d}` (instead of their configs' model)." for f, d in sorted(args.bases.items())),
             "Each task runs every method for the same number of steps from the same base. Nothing is chosen on",
             "the test split: every task holds 10 % of its training data out as a validation split; a run",
             "evaluates on it periodically, keeps the delta of its best validation score, and the test split",
             "scores that delta once. Each method's learning rate (*lr*) is the value of its grid with the best",
             "validation score on its family's selection task (a best value on the grid's edge extends the grid; " +
             ", ".join(f"{f}: {t}" for f, t in plan["selection"].items()) + ", seed 1; grids and scores at the end).",
             "The score is the test score's mean over seeds ± their standard deviation. *vs full* is the score over full fine-tuning's",
             "(for perplexity, full fine-tuning's perplexity over the method's: above 1 is better). Trainable %",
             "is of the base model's parameters and includes the new classification head. Delta = the saved",
             "directory (for full fine-tuning: the whole model). Step time is the median training step",
             f"(forward, backward, AdamW) with {args.threads_per_job} thread per run and {args.jobs} runs at once;",
             "peak memory is the run's peak resident set; both are indicative, as runs share the machine",
             f"(each run's commit and CPU are in its record in [{args.name}-runs.jsonl]({args.name}-runs.jsonl)).",
             f"Plots: score against trainable parameters [{args.name}.svg]({args.name}.svg); validation score against",
             f"steps (seed 1) [{args.name}-curves.svg]({args.name}-curves.svg).", "",
             f"## Methods within {NEAR_FULL * 100:.0f} % of full fine-tuning at ≤ {MAX_TRAINABLE_PCT:g} % trainable parameters", "",
             "| task | methods | which |", "|---|---:|---|"]
    for t, out in rows.items():
        near = near_full(out)
        if near is not None:
            lines.append(f"| {plan['tasks'][t]['title']} | {len(near)} of {len(out) - 1} | {', '.join(near)} |")
    lines += [""]
    for t, out in rows.items():
        spec = plan["tasks"][t]
        with open(os.path.join(ROOT, spec["config"]), encoding="utf-8") as f:
            cfg = json.load(f)
        tr = cfg["trainer"]
        lines += [f"## {spec['title']}", "",
                  f"`{spec['config']}`: {tr['max_steps']} steps × batch {tr['batch_size']}, {tr['schedule']} schedule, "
                  f"{spec['seeds']} seed(s).", "",
                  f"| method | lr | trainable | trainable % | {spec['metric']} | vs full | delta | step | peak memory |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in out:
            score = (f"{r['score']:.2f}" if spec["metric"] == "perplexity" else f"{r['score']:.3f}")
            if r["runs"] > 1:
                score += f" ± {r['spread']:.3f}"
            pct = f"{r['trainable_pct']:.2f} %" if r["trainable_pct"] is not None else ""
            vs = f"{r['vs_full']:.3f}" if "vs_full" in r else ""
            lr = chosen[(spec["family"], r["method"])]["lr"]
            lines.append(f"| {r['method']} | {lr:g} | {r['trainable_params']:,} | {pct} | {score} | {vs} | "
                         f"{human_bytes(r['delta_bytes'])} | {r['step_ms']:.0f} ms | {r['peak_rss_mib']:.0f} MiB |")
        lines.append("")
    lines += ["## Learning-rate selection", "",
              "Validation score of seed 1 on the family's selection task for each grid value; the chosen one in bold.", "",
              "| family (task) | method | validation score by lr |", "|---|---|---|"]
    for (family, name), c in sorted(chosen.items()):
        metric = plan["tasks"][plan["selection"][family]]["metric"]
        cells = [(f"**{lr:g}: {v:.4f}**" if lr == c["lr"] else f"{lr:g}: {v:.4f}") for lr, v in sorted(c["validation"].items())]
        lines.append(f"| {family} ({plan['selection'][family]}, {metric}) | {name} | {', '.join(cells)} |")
    lines.append("")
    return "\n".join(lines)


def near_full(out):
    """The methods of one task's rows that reach 95 % of full fine-tuning's score with at most 2 %
    of its trainable parameters; None without a full fine-tuning row."""
    if not any(r["method"] == "full fine-tuning" for r in out):
        return None
    return [r["method"] for r in out if r["method"] != "full fine-tuning" and r.get("vs_full", 0) >= NEAR_FULL
            and r["trainable_pct"] is not None and r["trainable_pct"] <= MAX_TRAINABLE_PCT]


def learning_curves(records, rows):
    """Per task and method of the table: seed 1's validation score at each evaluation, read from
    the record or, for records written before curves were kept, from the run's log."""
    curves = {}
    for t, out in rows.items():
        for r in out:
            rec = next((x for x in records if x["task"] == t and x["method"] == r["method"] and x["seed"] == 1), None)
            if rec is not None and "curve" in rec:
                curves.setdefault(t, {})[r["method"]] = rec["curve"]
    return curves


def plot_curves(curves, plan, out_dir, name):
    """Validation score against training steps, one panel per task, one line per method."""
    if shutil.which("gnuplot") is None or not curves:
        return
    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        for t, by_method in curves.items():
            spec = plan["tasks"][t]
            plots = []
            for i, (method, points) in enumerate(by_method.items()):
                data = os.path.join(tmp, f"{t}-{i}.dat")
                with open(data, "w", encoding="utf-8") as f:
                    f.writelines(f"{step} {score}\n" for step, score in points)
                width = 3 if method == "full fine-tuning" else 1.2
                # gnuplot cycles 8 colours: the dash and point type tell the next 8 apart
                style = f"lt {i % 8 + 1} dt {i // 8 + 1} pt {(7, 5, 9)[i // 8 % 3]}"
                plots.append(f"'{data}' using 1:2 with linespoints {style} lw {width} ps 0.5 title '{method}'")
            log_y = "set logscale y\n" if spec["metric"] == "perplexity" else "unset logscale y\n"
            panels.append(f"set title '{spec['title']}'\nset ylabel 'validation {spec['metric']}'\n{log_y}"
                          "plot " + ", ".join(plots) + "\n")
        body = ("set xlabel 'training step'\nset grid\nset key outside right font ',8'\n"
                f"set multiplot layout {len(panels)},1\n" + "".join(panels) + "unset multiplot\n")
        height = 380 * len(panels)
        for term, ext in (("svg size 1100,{} font 'sans,11' background rgb 'white'", "svg"),
                          ("pngcairo size 1100,{} font 'sans,10'", "png")):
            out = os.path.join(tmp, "curves." + ext)
            script = f"set terminal {term.format(height)}\nset output '{out}'\n" + body
            subprocess.run(["gnuplot"], input=script, text=True, check=True)
            os.replace(out, os.path.join(out_dir, f"{name}-curves.{ext}"))


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def plot(rows, plan, out_dir, name):
    """Score against trainable parameters (log scale), one panel per task, with gnuplot."""
    if shutil.which("gnuplot") is None:
        print("gnuplot not found (apt-get install gnuplot-nox): no plot written", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        for t, out in rows.items():
            spec = plan["tasks"][t]
            data = os.path.join(tmp, f"{t}.dat")
            with open(data, "w", encoding="utf-8") as f:
                for r in out:
                    f.write(f"{r['trainable_params']} {r['score']} {r['spread']} \"{r['method']}\" "
                            f"{1 if r['method'] == 'full fine-tuning' else 0}\n")
            full = next((r for r in out if r["method"] == "full fine-tuning"), None)
            ref = ""
            if full:
                level = full["score"] / NEAR_FULL if spec["metric"] == "perplexity" else NEAR_FULL * full["score"]
                ref = (f", {level} with lines dt 2 lc rgb '#999999' title '{NEAR_FULL * 100:.0f} % of full fine-tuning (dotted: {MAX_TRAINABLE_PCT:g} % trainable)'")
            two_pct = (f"set arrow 1 from {MAX_TRAINABLE_PCT / 100 * full['trainable_params']}, graph 0 to {MAX_TRAINABLE_PCT / 100 * full['trainable_params']}, "
                       "graph 1 nohead dt 3 lc rgb '#d62728'\n" if full else "unset arrow 1\n")
            panels.append(
                f"set title '{spec['title']}'\nset ylabel '{spec['metric']}'\n{two_pct}"
                f"plot '{data}' using 1:2:3 with yerrorbars pt 7 ps 0.8 lc rgb '#1f77b4' notitle, "
                f"'' using 1:2:4 with labels offset char 0.6,0.6 left font ',8' rotate by 20 notitle{ref}\n")
        body = ("set logscale x\nset xlabel 'trainable parameters'\nset grid\nset key bottom right font ',8'\n"
                "set format x '10^{%L}'\nset offsets graph 0.02, graph 0.25, graph 0.08, graph 0.08\n"
                f"set multiplot layout {(len(panels) + 1) // 2},{min(2, len(panels))}\n" + "".join(panels) +
                "unset multiplot\n")
        height = 420 * ((len(panels) + 1) // 2)
        for term, ext in (("svg size 1200,{} font 'sans,11' background rgb 'white'", "svg"),
                          ("pngcairo size 1200,{} font 'sans,10'", "png")):
            script = f"set terminal {term.format(height)}\nset output '{os.path.join(tmp, 'plot.' + ext)}'\n" + body
            subprocess.run(["gnuplot"], input=script, text=True, check=True)
            os.replace(os.path.join(tmp, "plot." + ext), os.path.join(out_dir, f"{name}.{ext}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default=os.path.join(ROOT, "configs", "results", "plan.json"))
    ap.add_argument("--train", default=os.path.join(ROOT, "build", "peft-train"))
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "results"), help="run directories")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"), help="where results.{md,json,svg,png} go")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: all in the plan)")
    ap.add_argument("--methods", default="", help="comma-separated method names (default: all in the plan)")
    ap.add_argument("--seeds", type=int, default=0, help="seeds per task (default: the plan's)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    ap.add_argument("--threads-per-job", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="rerun finished runs too")
    ap.add_argument("--base", action="append", default=[], metavar="FAMILY=DIR",
                    help="pretrained model for a family's tasks instead of the one in their configs "
                         "(e.g. gpt2=examples/models/gpt2-en-6m); repeatable")
    ap.add_argument("--name", default="results",
                    help="file stem of the outputs in --out (default: results -> results.md, ...)")
    ap.add_argument("--ledger", default="",
                    help="the finished runs' record (default: OUT/NAME-runs.jsonl); runs found there are not run again")
    args = ap.parse_args()
    args.ran = set()  # run directories this invocation ran (--force reruns each once)

    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    tasks = args.tasks.split(",") if args.tasks else list(plan["tasks"])
    methods = args.methods.split(",") if args.methods else list(plan["methods"])
    for t in tasks:
        if t not in plan["tasks"]:
            sys.exit(f"--tasks: unknown task '{t}' (plan has: {', '.join(plan['tasks'])})")
    for m in methods:
        if m not in plan["methods"]:
            sys.exit(f"--methods: unknown method '{m}' (plan has: {', '.join(plan['methods'])})")
    if not os.access(args.train, os.X_OK):
        sys.exit(f"--train: {args.train} is not an executable (build the project first)")

    bases = {}
    for spec in args.base:
        family, _, path = spec.partition("=")
        if not path or family not in plan["selection"]:
            sys.exit(f"--base: expected FAMILY=DIR with FAMILY one of {', '.join(plan['selection'])}, found '{spec}'")
        if not os.path.isfile(os.path.join(ROOT, path, "config.json")):
            sys.exit(f"--base {spec}: {path}/config.json not found (a model directory is expected)")
        bases[family] = path
    args.bases = bases

    # Paths relative to the project root (the runs' working directory) keep the records portable.
    train, runs = os.path.relpath(args.train, ROOT), os.path.relpath(args.runs, ROOT)
    os.makedirs(args.out, exist_ok=True)
    args.ledger = Ledger(args.ledger or os.path.join(args.out, args.name + "-runs.jsonl"))
    args.provenance = provenance()

    def job(t, name, seed, lr):
        spec, entry = plan["tasks"][t], plan["methods"][name]
        run_dir = os.path.join(runs, t, slug(name), f"lr{lr:g}", f"seed{seed}")
        cmd = [train, "--config", spec["config"],
               "--set", "method=" + json.dumps(method_config(entry, t, spec)),
               "--set", f"trainer.lr={lr}",
               "--set", f"seed={seed}", "--set", f"output_dir={run_dir}",
               "--set", f"threads={args.threads_per_job}"]
        if spec["family"] in bases:
            cmd += ["--set", f"model={bases[spec['family']]}"]
        return {"task": t, "method": name, "seed": seed, "lr": lr, "dir": run_dir, "cmd": cmd, "task_spec": spec,
                "inputs": inputs_fingerprint(spec["config"], bases.get(spec["family"]))}

    def grid(name):
        return plan["methods"][name].get("lr_grid", plan["lr_grid"])

    # 1. Learning rates: every grid value on each family's selection task, seed 1, scored on
    # validation. A best value on the grid's edge extends the grid one step that way (at most
    # max_extensions times), so that the choice is not the grid's bound.
    families = sorted({plan["tasks"][t]["family"] for t in tasks})
    grids = {(f, name): list(grid(name)) for f in plan["selection"] for name in plan["methods"]}
    records, failed = [], []
    chosen = {}  # (family, method) -> {"lr", "validation": {lr: score}}
    for _ in range(plan.get("max_extensions", 2) + 1):
        todo = [job(plan["selection"][f], name, 1, lr) for f in families for name in methods
                if (f, name) not in chosen for lr in grids[(f, name)]]
        more, more_failed = run_all(todo, args)
        records += more
        failed += more_failed
        for (f, name), values in grids.items():
            if (f, name) in chosen:
                continue
            sel = plan["selection"][f]
            metric = plan["tasks"][sel]["metric"]
            scores = {}
            for lr in values:
                rec = next((r for r in records if r["task"] == sel and r["method"] == name and r["lr"] == lr), None)
                rec = rec or finished(job(sel, name, 1, lr), args.ledger)
                if rec:
                    scores[lr] = rec["validation_score"]
            if len(scores) < len(values):
                continue  # not run (not selected this time) or failed
            best = best_lr(scores, metric)
            step = values[-1] / values[-2] if len(values) > 1 else 3.0
            if best == values[-1]:
                values.append(float(f"{best * step:.1g}"))
            elif best == values[0]:
                values.insert(0, float(f"{best / step:.1g}"))
            else:
                chosen[(f, name)] = {"lr": best, "validation": scores}
    for (f, name), values in grids.items():  # out of extensions: the best value tried
        if (f, name) not in chosen:
            sel = plan["selection"][f]
            done = [(lr, finished(job(sel, name, 1, lr), args.ledger)) for lr in values]
            scores = {lr: r["validation_score"] for lr, r in done if r}
            if len(scores) == len(values) - 1:  # all but the last extension, never run
                chosen[(f, name)] = {"lr": best_lr(scores, plan["tasks"][sel]["metric"]), "validation": scores}
    missing = [(f, n) for f in families for n in methods if (f, n) not in chosen]
    if missing:
        sys.exit(f"no learning rate chosen for {missing}: a selection run failed")

    # 2. The table: every task and seed at the chosen learning rate (the selection run is reused).
    everything = [job(t, name, seed, chosen[(plan["tasks"][t]["family"], name)]["lr"])
                  for t in plan["tasks"] for name in plan["methods"]
                  if (plan["tasks"][t]["family"], name) in chosen
                  for seed in range(1, (args.seeds or plan["tasks"][t]["seeds"]) + 1)]
    jobs = [j for j in everything if j["task"] in tasks and j["method"] in methods]
    records, more_failed = run_all(jobs, args)
    failed += more_failed

    # The table holds every finished run of the plan, not only the ones selected this time.
    for j in everything:
        if j not in jobs:
            rec = finished(j, args.ledger)
            if rec:
                records.append(rec)
    os.makedirs(args.out, exist_ok=True)
    rows = summarize(records, plan, [t for t in plan["tasks"] if any(r["task"] == t for r in records)])
    lrs = [{"family": f, "method": n, **c} for (f, n), c in sorted(chosen.items())]
    curves = learning_curves(records, rows)
    atomic_write(os.path.join(args.out, args.name + ".md"), markdown(rows, plan, args, chosen) + "\n")
    atomic_write(os.path.join(args.out, args.name + ".json"),
                 json.dumps({"summary": rows, "learning_rates": [{**c, "validation": {f"{k:g}": v for k, v in c["validation"].items()}} for c in lrs],
                             "runs": sorted(records, key=lambda r: (r["task"], r["method"], r["seed"]))},
                            indent=1) + "\n")
    plot(rows, plan, args.out, args.name)
    plot_curves(curves, plan, args.out, args.name)
    print(f"wrote {args.out}/{args.name}.md, .json, .svg, .png and {args.name}-curves.svg, .png", flush=True)
    if failed:
        sys.exit(f"{len(failed)} run(s) failed")


if __name__ == "__main__":
    main()
