"""``ckptfmt inspect DIR``, ``ckptfmt validate DIR`` and ``ckptfmt reshard DIR --tp_size N --pp_size M``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import load_config
from .constants import RANK_FILE
from .entry import run_main
from .errors import CheckpointError
from .io import RankFileReader
from .names import KV_CACHE_SCALES, LINEAR_SCALES, PER_CHANNEL_SCALE, family_of, model_spec
from .reconcile import reconcile
from .semantics import EXECUTORS, support_rows
from .validate import validate_checkpoint

SCALE_KINDS = (*LINEAR_SCALES, *KV_CACHE_SCALES, PER_CHANNEL_SCALE)


def inspect_checkpoint(directory: str) -> dict:
    """Summary of a checkpoint: architecture, dtype, mapping, quantization, the math features with the
    executors that compute each (``semantics``), fields its tensors correct, tensors and bytes per rank."""
    cfg = reconcile(load_config(directory), directory)
    ranks = []
    scales = dict.fromkeys(SCALE_KINDS, 0)  # scaling-factor tensors per kind, over all rank files
    for rank in range(cfg.mapping.world_size):
        path = Path(directory) / RANK_FILE.format(rank=rank)
        entry = {
            "rank": rank,
            "file": path.name,
            "tp_rank": cfg.mapping.tp_rank(rank),
            "pp_rank": cfg.mapping.pp_rank(rank),
        }
        try:
            r = RankFileReader(path)
            entry["tensors"] = len(r.keys())
            for name in r:
                kind = name.rsplit(".", 1)[-1]
                if kind in scales:
                    scales[kind] += 1
            entry["bytes"] = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in r.entries.values())
        except CheckpointError as err:
            entry["error"] = str(err)
        ranks.append(entry)
    q = cfg.quantization
    return {
        "directory": str(directory),
        "architecture": cfg.architecture,
        "family": family_of(cfg),
        "dtype": cfg.dtype,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.kv_heads,
        "vocab_size": cfg.vocab_size,
        "mapping": {
            "world_size": cfg.mapping.world_size,
            "tp_size": cfg.mapping.tp_size,
            "pp_size": cfg.mapping.pp_size,
        },
        "quantization": {
            "quant_algo": q.quant_algo,
            "kv_cache_quant_algo": q.kv_cache_quant_algo,
            "group_size": q.group_size if q.per_group else None,
            "scheme": q.scheme,
            "scales": {kind: n for kind, n in scales.items() if n},
        },
        "features": [
            {"field": name, "value": value, "executors": who} for name, value, who in support_rows(model_spec(cfg))
        ],
        "notes": cfg.notes,
        "ranks": ranks,
    }


def _print_inspect(info: dict) -> None:
    m, q = info["mapping"], info["quantization"]
    print(
        f"{info['directory']}: {info['architecture']} ({info['family']}), dtype {info['dtype']}, "
        f"{info['num_hidden_layers']} layers, hidden {info['hidden_size']}, heads {info['num_attention_heads']}"
        f"/{info['num_key_value_heads']} kv, vocab {info['vocab_size']}"
    )
    print(
        f"mapping: world {m['world_size']} = tp {m['tp_size']} x pp {m['pp_size']}; "
        f"quantization: {q['quant_algo'] or 'none'}, kv cache {q['kv_cache_quant_algo'] or 'none'}"
    )
    if q["scales"]:
        print(f"scales ({q['scheme']} layout): " + ", ".join(f"{kind} {n}" for kind, n in q["scales"].items()))
    print("features (executors: " + ", ".join(f"{k} = {v}" for k, v in EXECUTORS.items()) + "):")
    width = max(len(f["field"]) for f in info["features"])
    for f in info["features"]:
        who = ", ".join(f["executors"]) or "none: no executor computes it"
        print(f"  {f['field']:<{width}}  {f['value']}: {who}")
    for note in info["notes"]:
        print(f"note: {note}")
    for r in info["ranks"]:
        detail = r.get("error") or f"{r['tensors']} tensors, {r['bytes'] / 1e6:.1f} MB"
        print(f"  {r['file']} (tp {r['tp_rank']}, pp {r['pp_rank']}): {detail}")


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="ckptfmt")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="ckptfmt", description="Inspect and validate checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="summarize a checkpoint directory")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("validate", help="check config, rank files, tensors and manifest")
    p.add_argument("directory")
    p.add_argument("--no-hash", action="store_true", help="check manifest sizes only, not checksums")
    p.add_argument(
        "--require-manifest", action="store_true", help="a checkpoint without manifest.json is invalid, not a warning"
    )
    p = sub.add_parser("reshard", help="rewrite a checkpoint at another tp/pp layout (no source model needed)")
    p.add_argument("directory", help="the checkpoint to read")
    p.add_argument("--tp_size", type=int, default=1, help="tensor-parallel size of the output (default: 1)")
    p.add_argument("--pp_size", type=int, default=1, help="pipeline-parallel size of the output (default: 1)")
    p.add_argument("--output_dir", required=True, help="checkpoint directory to create")
    p.add_argument(
        "--use_parallel_embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="split the embedding across tp ranks (default: as in the source)",
    )
    p.add_argument(
        "--embedding_sharding_dim",
        type=int,
        choices=(0, 1),
        default=None,
        help="0: split vocab rows, 1: split hidden columns (default: as in the source)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory written by us")
    p.add_argument("--skip_checksum", action="store_true", help="do not check the source against its manifest")
    args = parser.parse_args(argv)
    try:
        if args.command == "reshard":
            from .reshard import reshard

            summary = reshard(
                args.directory,
                args.output_dir,
                args.tp_size,
                args.pp_size,
                overwrite=args.overwrite,
                verify=not args.skip_checksum,
                use_parallel_embedding=args.use_parallel_embedding,
                embedding_sharding_dim=args.embedding_sharding_dim,
            )
            print(summary.line(args.output_dir))
            return 0
        if args.command == "inspect":
            info = inspect_checkpoint(args.directory)
            print(json.dumps(info, indent=2)) if args.json else _print_inspect(info)
            return 0
        problems, warnings = validate_checkpoint(
            args.directory, hash_files=not args.no_hash, require_manifest=args.require_manifest
        )
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # run_main: the reader went away, exit quietly
    except OSError as err:  # disk full, permissions
        print(f"error: {err.filename or args.directory}: {err.strerror or err}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for prob in problems:
        print(prob, file=sys.stderr)
    if problems:
        return 1
    print(f"{args.directory}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
