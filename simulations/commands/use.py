"""``crossfed recommend | score | export | serve``: use what a finished run learned.

Thin wrappers over :mod:`clients.recommender`, :mod:`clients.export` and :mod:`clients.serve`;
torch, transformers and FastAPI are imported inside the commands so that ``crossfed --help``
stays light. Output is JSON (default) or CSV, to stdout or ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import ConfigError
from common.files import CsvRecords, InputFileError, input_lines, max_field_chars
from common.ports import check_listen
from common.run_files import read_finished_summary

if TYPE_CHECKING:
    from clients.recommender import Recommender

USER_ERRORS = (("clients.recommender", "RecommendError"), ("clients.export", "ExportError"),
               ("clients.mix", "MixError"))  # fmt: skip


def check_paths(args: argparse.Namespace) -> None:
    """Refuse a run that is not finished, or a ``--data`` / ``--state-dir`` folder that is not
    there, before torch and transformers load (seconds): the commands below call it first."""
    read_finished_summary(Path(args.run).expanduser().resolve())
    for flag, value in (("--data", getattr(args, "data", None)), ("--state-dir", getattr(args, "state_dir", None))):
        if value and not Path(value).expanduser().is_dir():
            raise ConfigError(f"{flag} {value}: no such folder")
    if getattr(args, "data", None):
        platforms = args.platform if isinstance(args.platform, list) else [args.platform]
        for platform in platforms:
            if not (Path(args.data).expanduser() / platform).is_dir():
                raise ConfigError(f"--data {args.data}: no folder for platform {platform!r} (expected "
                                  f"{Path(args.data) / platform}/items.csv and interactions.csv)")  # fmt: skip


def _load(args: argparse.Namespace, platform: str) -> Recommender:
    from clients.recommender import Recommender

    return Recommender.from_run(args.run, platform, data_dir=args.data, state_dir=args.state_dir, device=args.device)


def _value(row: dict[str, str], column: str, path: Path, line: int) -> str:
    value = row[column].strip()
    if not value:
        raise InputFileError.at(path, "empty value", line=line, field=column, expected="an id", got=row[column])
    return value


def read_ids(path: Path, column: str) -> list[str]:
    """Ids one per line, or a CSV whose header names ``column``; blank lines skipped, order kept.

    Read by :mod:`common.files`: UTF-8, bounded lines and fields, every problem one
    :class:`~common.files.InputFileError` naming the file, line and field."""
    first = next((line for _, line in input_lines(path) if line.strip()), None)
    if first is None:
        raise InputFileError.at(path, "empty file", line=1, got="no ids",
                                expected=f"one {column} a line, or a CSV with a `{column}` column")  # fmt: skip
    if "," in first:
        ids = [_value(row, column, path, line) for line, row in CsvRecords(path, (column,))]
    else:
        limit = max_field_chars()
        ids = []
        for line, text in input_lines(path, field=column):
            value = text.strip()
            if len(value) > limit:
                raise InputFileError.at(path, "field too long", line=line, field=column,
                                        expected=f"at most {limit} characters", got=f"{len(value)} chars")  # fmt: skip
            if value:
                ids.append(value)
        ids = ids[1:] if ids[0] == column else ids
    if not ids:
        raise InputFileError.at(path, "no ids", line=1, field=column, expected="at least one id", got=0)
    return ids


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(user_id, item_id) rows of a UTF-8 CSV with those columns (others may follow, named in the header)."""
    pairs = [(_value(row, "user_id", path, line), _value(row, "item_id", path, line))
             for line, row in CsvRecords(path, ("user_id", "item_id"))]  # fmt: skip
    if not pairs:
        raise InputFileError.at(path, "no rows", line=2, expected="at least one user_id,item_id row", got=0)
    return pairs


def emit(rows: Sequence[dict[str, Any]], document: dict[str, Any], fmt: str, out: str | None) -> None:
    """``document`` as JSON, or ``rows`` as CSV; to ``out`` or stdout."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["user_id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def cmd_recommend(args: argparse.Namespace) -> int:
    users = list(args.user or []) + (read_ids(Path(args.users), "user_id") if args.users else [])
    if not users:
        raise ConfigError("`crossfed recommend` needs --user ID or --users FILE")
    check_paths(args)
    rec = _load(args, args.platform)
    result = rec.top_k_many(users, args.k, exclude_seen=not args.include_seen, cold_start=args.cold_start)
    rows = [{"user_id": u, "rank": r, **s.to_dict()} for u, top in result.items() for r, s in enumerate(top, 1)]
    document = {"run": str(Path(args.run).resolve()), "platform": args.platform, "k": args.k,
                "recommendations": {u: [s.to_dict() for s in top] for u, top in result.items()}}  # fmt: skip
    emit(rows, document, args.format, args.out)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    if args.pairs:
        pairs = read_pairs(Path(args.pairs))
    elif args.user and args.items:
        pairs = [(args.user[0], item) for item in args.items]
    else:
        raise ConfigError("`crossfed score` needs --user ID --items ID [ID ...], or --pairs FILE (user_id,item_id)")
    check_paths(args)
    rec = _load(args, args.platform)
    by_user: dict[str, list[int]] = {}
    for i, (user, _) in enumerate(pairs):
        by_user.setdefault(user, []).append(i)
    scores = [0.0] * len(pairs)
    for user, rows in by_user.items():
        probs = rec.score(user, [pairs[i][1] for i in rows], cold_start=args.cold_start)
        for i, p in zip(rows, probs, strict=True):
            scores[i] = float(p)
    rows_out = [{"user_id": u, "item_id": i, "score": s} for (u, i), s in zip(pairs, scores, strict=True)]
    emit(rows_out, {"run": str(Path(args.run).resolve()), "platform": args.platform, "scores": rows_out},
         args.format, args.out)  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    read_finished_summary(Path(args.run).expanduser().resolve())  # before torch loads
    from clients.export import export_run

    out = export_run(Path(args.run), Path(args.out), merge=args.merge, copy_base=args.copy_base,
                     overwrite=args.overwrite)  # fmt: skip
    print(f"exported {'merged model' if args.merge else 'adapter'} to {out} (model card: {out / 'README.md'})")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    for run in (args.federated, args.local):  # before torch loads
        read_finished_summary(Path(run).expanduser().resolve())
    from clients.mix import mix_runs

    result = mix_runs(Path(args.federated), Path(args.local), args.platform, Path(args.out), args.data,
                      args.state_dir, args.device)  # fmt: skip
    tried = ", ".join(f"{s:g}: {m.get(result.metric, float('nan')):.4f}" for s, m in result.valid.items())
    print(f"{args.platform}: fused share {result.share:g} (validation {result.metric.removeprefix('valid.')} "
          f"{tried}); test AUC "
          f"{result.test.get('auc', float('nan')):.4f}; written to {result.out} "
          f"(use it as any run: crossfed recommend --run {result.out} --platform {args.platform})")  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    check_listen(args.host, args.port)  # before minutes of loading (and before torch is imported), not after
    check_paths(args)
    from clients.serve import create_app, serve

    platforms = args.platform
    recommenders = {p: _load(args, p) for p in platforms}
    app = create_app(recommenders, {"run": str(Path(args.run).resolve())})
    print(f"serving {', '.join(platforms)} of {args.run} on http://{args.host}:{args.port} "
          f"(GET /health, GET /platforms/<platform>/recommend?user_id=..., POST /platforms/<platform>/score)",
          flush=True)  # fmt: skip
    serve(app, args.host, args.port)
    return 0


def _model_args(p: argparse.ArgumentParser, many_platforms: bool = False) -> None:
    p.add_argument("--run", required=True, help="a finished run folder (summary.json, adapter/, private/)")
    if many_platforms:
        p.add_argument("--platform", required=True, action="append", help="a platform to serve (repeatable)")
    else:
        p.add_argument("--platform", required=True, help="the platform whose catalogue and users to use")
    p.add_argument("--data", help="DATASET folder (default: the run's data.dir); newer interactions count as history")
    p.add_argument("--state-dir", help="a deployed platform's state-dir (default: the run's private/ folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    if not many_platforms:  # the server takes cold_start per request
        p.add_argument("--cold-start", action="store_true", help="allow users without history (no private parts)")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", help="write here instead of stdout")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recommend", help="top-K items for users of a platform, from a finished run")
    _model_args(rec)
    rec.add_argument("--user", action="append", help="a user id (repeatable)")
    rec.add_argument("--users", help="file of user ids: one per line, or a CSV with a user_id column")
    rec.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    rec.add_argument("--include-seen", action="store_true", help="do not leave out items the user already has")
    _output_args(rec)
    rec.set_defaults(func=cmd_recommend)

    score = sub.add_parser("score", help="like-probabilities of given items for users, from a finished run")
    _model_args(score)
    score.add_argument("--user", action="append", help="the user id")
    score.add_argument("--items", nargs="+", help="candidate item ids")
    score.add_argument("--pairs", help="CSV with columns user_id,item_id")
    _output_args(score)
    score.set_defaults(func=cmd_score)

    exp = sub.add_parser("export", help="a portable model folder (PEFT adapter, or --merge) with a model card")
    exp.add_argument("--run", required=True, help="a finished run folder")
    exp.add_argument("--out", required=True, help="folder to write")
    exp.add_argument("--merge", action="store_true", help="merge LoRA into the base: a plain transformers model")
    exp.add_argument("--copy-base", action=argparse.BooleanOptionalAction, default=True,
                     help="copy the base model in (default); else reference it (Hub id / relative path)")  # fmt: skip
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=cmd_export)

    mix = sub.add_parser("mix", help="a platform's personal mix of the fused model and its own local model, "
                         "the share picked on its validation split; written as a run folder")  # fmt: skip
    mix.add_argument("--federated", required=True, help="the federation's finished run folder")
    mix.add_argument("--local", required=True, help="a finished run of this platform alone (same data, split, "
                     "model): e.g. `crossfed simulate --baseline` writes <run>/local/<platform>")  # fmt: skip
    mix.add_argument("--platform", required=True, help="this platform")
    mix.add_argument("--out", required=True, help="new run folder for the mix")
    mix.add_argument("--data", help="DATASET folder (default: the federated run's data.dir)")
    mix.add_argument("--state-dir", help="a deployed platform's state-dir (its private parameters of the federation)")
    mix.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    mix.set_defaults(func=cmd_mix)

    srv = sub.add_parser("serve", help="HTTP recommendations for platforms of a finished run (FastAPI)")
    _model_args(srv, many_platforms=True)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.set_defaults(func=cmd_serve)
