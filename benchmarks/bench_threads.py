"""Several training jobs on one machine: throughput per job under each thread setting vs its fair share.

    python benchmarks/bench_threads.py [--jobs 2] [--seconds 20] [--batch 8] [--length 1024]

Starts --jobs processes at once, each training the tiny LM (AdamW, batch x length) for --seconds
after a warm-up step, and reports each job's tokens/s. The fair share is what one job gets alone
with cores / jobs threads (its `solo` row): `vs fair share` 1.00 means the jobs lose nothing to each
other beyond the cores they split. Settings (the environment each job starts with):
  default      PyTorch's defaults: as many intra-op threads as cores in every job, OpenMP threads spin
               while idle (libgomp's default)
  auto         torch_threads: auto as train.py applies it with HYENADNA_JOBS unset: the jobs find
               each other (hyenadna.runtime.JobRegistry), each takes cores / running jobs threads and
               looks again every 2 s (ThreadShare), OpenMP's default waits (what a job alone runs
               fastest with)
  auto-jobs    the same with HYENADNA_JOBS=--jobs, as train.py applies it: each job takes its fair
               share of threads and idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SETTINGS = ("default", "auto", "auto-jobs")


def child(seconds: float, batch: int, length: int, threads: str) -> dict[str, float]:
    """One job: train for `seconds`, return tokens/s and the thread settings it ran with."""
    import torch

    from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
    from hyenadna.runtime import ThreadShare, jobs, resolve_threads, thread_settings, use_huge_pages

    use_huge_pages(True)
    jobs.register()
    share = ThreadShare() if threads == "auto" else None
    n = resolve_threads("auto" if threads == "auto" else (int(threads) if threads != "default" else None))
    if n is not None:
        torch.set_num_threads(n)
    torch.manual_seed(0)
    model = HyenaDNAForCausalLM(HyenaConfig.preset("tiny-1k"))
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
    data = torch.randint(7, 11, (batch, length + 1))

    def step() -> None:
        if share is not None:
            share.update()
        model(data[:, :-1], targets=data[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return {"tokens_s": steps * batch * length / (time.perf_counter() - start), "settings": thread_settings()}


def run(jobs: int, setting: str, args: argparse.Namespace, threads: str | None = None) -> list[dict]:
    """Start `jobs` children with `setting`'s environment at once; their results."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "HYENADNA_JOBS", "MKL_NUM_THREADS"):
        env.pop(key, None)
    if setting.startswith("auto"):
        threads = threads or "auto"
    if setting == "auto-jobs":  # as train.py applies HYENADNA_JOBS > 1: passive waits, the fair share of threads
        env["HYENADNA_JOBS"] = str(args.jobs)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--child", threads or "default", "--seconds", str(args.seconds),
           "--batch", str(args.batch), "--length", str(args.length)]
    with tempfile.TemporaryDirectory() as registry:  # these jobs see each other, nothing else
        env["HYENADNA_JOBS_DIR"] = registry
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    """Print solo (fair-share) and concurrent tokens/s per setting."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.seconds, args.batch, args.length, args.child)))
        return
    from hyenadna.runtime import available_cores

    cores = available_cores()
    share = max(1, cores // args.jobs)
    print(f"# {args.jobs} concurrent tiny-1k training jobs (batch {args.batch} x {args.length}, AdamW) on {cores} cores, "
          f"{args.seconds:.0f} s each; fair share = one job alone with {share} thread(s)")
    solo = run(1, "auto-jobs", args, threads=str(share))[0]
    alone = run(1, "auto", args)[0]
    print(f"{'setting':>10} {'tokens/s per job':>18} {'vs fair share':>14}  thread settings of job 1")
    print(f"{'solo':>10} {solo['tokens_s']:>18,.0f} {1:>14.2f}  {solo['settings']}", flush=True)
    print(f"{'alone':>10} {alone['tokens_s']:>18,.0f} {alone['tokens_s'] / solo['tokens_s']:>14.2f}  "
          f"{alone['settings']}  (one job, auto, all cores)", flush=True)
    for setting in args.settings:
        res = run(args.jobs, setting, args)
        per_job = sum(r["tokens_s"] for r in res) / len(res)
        print(f"{setting:>10} {per_job:>18,.0f} {per_job / solo['tokens_s']:>14.2f}  {res[0]['settings']}", flush=True)


if __name__ == "__main__":
    main()
