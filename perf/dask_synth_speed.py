"""Throughput of `cellsynth synth` in one process against a Dask LocalCluster, and the cost of a
chunk on the cluster.

Usage:
    python perf/dask_synth_speed.py [--num 64] [--size 256] [--workers 2] [--batch 8]
    python perf/dask_synth_speed.py --stylegan3 SNAPSHOT.pt --pix2pixhd LATEST.pt
    python perf/dask_synth_speed.py --num 4 --size 32 --gan-cbase 512 --gan-cmax 16 --gan-ngf 4

For each kind of sources (``--sources simulate,gan``) it makes ``--num`` pairs once in this
process (``synth`` without workers) and once on a LocalCluster of ``--workers`` processes with
one thread each (started once, before the timed runs, and timed on its own), and prints one JSON
object: pairs per second of both, their ratio, and per chunk (one ``--batch`` of seeds) the
seconds a chunk spends making its samples on its worker and the overhead around it:

    overhead_per_chunk_s = (wall seconds of the distributed part x worker threads
                            - summed seconds making samples in the chunks) / chunks

i.e. the worker time per chunk not spent making samples (scheduling, sending, the client's
work, idle workers at the end of the run). Loading the networks, once per worker (they are kept
for later runs with the same checkpoints), is timed on its own in a short first run on the
cluster: ``first_load_seconds_per_worker``.
``noop_task_ms`` is the round trip of an empty task on the same cluster.

GAN sources: the given checkpoints (``--stylegan3``, ``--pix2pixhd``), or else untrained
networks of the given widths built here at ``--size`` (an untrained network costs what a
trained one of the same shape costs; give trained checkpoints for figures of a real model).
Each run writes into a temporary folder; set OMP_NUM_THREADS to compare like with like (the
workers run one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from cellsynth.precision import cpu_kind
from cellsynth.synth import synth


def _noop(x):
    return x


def build_gan(tmp: Path, args) -> tuple[str, str]:
    """Untrained StyleGAN2 (fbd masks) and Pix2PixHD checkpoints at ``args.size``."""
    import torch

    from cellsynth.pix2pixhd.networks import build_generator
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.stylegan3.networks import build_networks
    from cellsynth.stylegan3.snapshot import save_snapshot
    from cellsynth.training.checkpoint import save_checkpoint

    build = dict(
        cfg="stylegan2",
        img_resolution=args.size,
        img_channels=3,
        c_dim=0,
        cbase=args.gan_cbase,
        cmax=args.gan_cmax,
        z_dim=args.gan_zdim,
        w_dim=args.gan_zdim,
        map_depth=2,
        seed=0,
    )
    G, _ = build_networks(**build)
    snap = tmp / "G.pt"
    config = {
        "build": build,
        "resolution": args.size,
        "channels": 3,
        "encoding": "fbd",
        "num_classes": 0,
    }
    save_snapshot(snap, {"G_ema": G.state_dict()}, config)
    opt = Options(
        ngf=args.gan_ngf,
        n_downsample_global=args.gan_down,
        n_blocks_global=args.gan_blocks,
        label_nc=2,
        output_nc=1,
        resize_or_crop="none",
    ).check()
    torch.manual_seed(0)
    gen = build_generator(opt)
    p2p = tmp / "P.pt"
    meta = {"opt": opt.to_dict(), "size": [args.size, args.size]}
    save_checkpoint(p2p, {"G": gen.state_dict()}, "pix2pixhd", meta)
    return str(snap), str(p2p)


def timed(out: Path, sources: dict, args, dask=None) -> dict:
    s = synth(
        out,
        seeds=f"0-{args.num - 1}",
        spots_count=args.spots,
        batch=args.batch,
        device=args.device,
        dask=dask,
        progress=False,
        **sources,
    )
    row = {"seconds": round(s["seconds"], 3), "pairs_per_s": round(s["written"] / s["seconds"], 3)}
    facts = s.get("dask")
    if facts:
        chunks = max(1, facts["chunks"])
        busy = facts["seconds"] * facts["slots"]
        work = facts["chunk_seconds"] - facts["load_seconds"]  # making samples
        row.update(
            chunks=facts["chunks"],
            slots=facts["slots"],
            distributed_seconds=round(facts["seconds"], 3),
            chunk_seconds_mean=round(work / chunks, 4),
            load_seconds_per_worker=round(
                facts["load_seconds"] / max(1, len(facts["workers_used"])), 4
            ),
            overhead_per_chunk_s=round(max(0.0, busy - work) / chunks, 4),
            written_by_workers=facts["written_by_workers"],
            written_by_client=facts["written_by_client"],
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=64, help="pairs per timed run")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--batch", type=int, default=8, help="seeds per chunk (and GAN batch)")
    ap.add_argument("--spots", type=float, default=3.0)
    ap.add_argument("--sources", default="simulate,gan", help="simulate, gan or both")
    ap.add_argument("--stylegan3", default=None, help="generator snapshot (GAN masks)")
    ap.add_argument("--pix2pixhd", default=None, help="translator checkpoint (GAN images)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gan-cbase", type=int, default=8192, help="untrained generator width")
    ap.add_argument("--gan-cmax", type=int, default=256)
    ap.add_argument("--gan-zdim", type=int, default=128)
    ap.add_argument("--gan-ngf", type=int, default=32, help="untrained translator width")
    ap.add_argument("--gan-down", type=int, default=3)
    ap.add_argument("--gan-blocks", type=int, default=6)
    args = ap.parse_args()
    kinds = [k.strip() for k in args.sources.split(",") if k.strip()]
    unknown = set(kinds) - {"simulate", "gan"}
    if unknown or not kinds:
        ap.error(f"--sources: simulate and/or gan, not {', '.join(sorted(unknown)) or 'nothing'}")

    from distributed import Client, LocalCluster

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {}
        if "simulate" in kinds:
            sources["simulate"] = {"masks": "simulate", "images": "simulate", "size": args.size}
        if "gan" in kinds:
            if args.stylegan3 and args.pix2pixhd:
                g, p = args.stylegan3, args.pix2pixhd
            else:
                g, p = build_gan(tmp, args)
            sources["gan"] = {"masks": f"stylegan3:{g}", "images": f"pix2pixhd:{p}"}
        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        start_s = time.perf_counter() - t0
        try:
            address = cluster.scheduler_address
            client.gather(client.map(_noop, range(4)))  # workers up and talking
            t0 = time.perf_counter()
            n_noop = 50
            for i in range(n_noop):
                client.submit(_noop, i, pure=False).result()
            noop_ms = (time.perf_counter() - t0) / n_noop * 1000
            warm = argparse.Namespace(**{**vars(args), "num": 2})
            # a chunk or two per worker: every worker imports and loads before the timed run
            warm_d = argparse.Namespace(**{**vars(args), "num": 2 * args.batch * args.workers})
            for kind, src in sources.items():
                timed(tmp / f"{kind}-warm-1", src, warm)  # imports, kernels, first loads
                first = timed(tmp / f"{kind}-warm-d", src, warm_d, dask=address)
                one = timed(tmp / f"{kind}-one", src, args)
                dk = timed(tmp / f"{kind}-dask", src, args, dask=address)
                rows.append(
                    {
                        "sources": kind,
                        "one_process": one,
                        "dask": dk,
                        "ratio": round(dk["pairs_per_s"] / one["pairs_per_s"], 3),
                        "first_load_seconds_per_worker": first["load_seconds_per_worker"],
                    }
                )
        finally:
            client.close()
            cluster.close()
    print(
        json.dumps(
            {
                "benchmark": "dask_synth_speed",
                "size": args.size,
                "num": args.num,
                "batch": args.batch,
                "workers": args.workers,
                "spots_per_cell": args.spots,
                "cluster_start_s": round(start_s, 3),
                "noop_task_ms": round(noop_ms, 3),
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "cpu": cpu_kind(),
                "results": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
