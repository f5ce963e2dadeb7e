"""Dataset loaders: files -> raw example rows (plain Python, no Spark).

Every loader returns :class:`Loaded`: a list of row dicts with the raw fields
(``example_id, text, pair, label, split, doc_id, source, row_number, meta, decode_error``)
that ingest validates, splits and writes. Loaders never drop a row: a row they cannot read
comes back with ``decode_error`` set so ingest stores it in ``rejects`` with the reason.
Any path works (users point them at their own copies); a missing file raises
:class:`DataError` naming the path and how to get the data.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pld_spark.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]

HOW_TO_GET = {
    "stereoset": "the StereoSet dev split (stereoset_dev_sentences_with_ids.json) ships in data/stereoset/ of the "
                 "pld_spark repository; see data/stereoset/README.md",
    "contractnli": "ContractNLI (dev.json, test.json, train_truncated.json) ships in data/contractnli/ of the "
                   "pld_spark repository; the full train.json is at the ContractNLI release (stanfordnlp)",
    "generic": "point dataset.path at a JSONL, CSV, Parquet or Delta source",
}

RAW_FIELDS = ("example_id", "text", "pair", "label", "split", "doc_id", "source", "row_number", "meta", "decode_error")


@dataclass
class Loaded:
    rows: list[dict[str, Any]] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def add(self, **kw: Any) -> None:
        row = {k: None for k in RAW_FIELDS}
        row.update(kw)
        if row["meta"] is not None and not isinstance(row["meta"], str):
            row["meta"] = json.dumps(row["meta"], sort_keys=True, default=str)
        self.rows.append(row)


def resolve_path(path: str | Path, loader: str) -> Path:
    """Absolute path. A relative path is looked up in the current directory first (where a
    command-line user's own files are), then in the repository root (where the bundled
    datasets are, e.g. ``data/stereoset/...``). ``dataset.path``'s description says the same."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise DataError(f"dataset file not found: {path} (looked in {', '.join(str(c) for c in candidates)}). "
                    f"How to get it: {HOW_TO_GET.get(loader, HOW_TO_GET['generic'])}")


def stable_id(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


# ----------------------------------------------------------------------------- StereoSet
STEREOSET_SENTENCE_LABELS = {0: "anti-stereotype", 1: "stereotype", 2: "unrelated"}


def load_stereoset(path: str, options: dict[str, Any]) -> Loaded:
    """StereoSet dev (``{stereotype, anti-stereotype, unrelated}`` lists of sentence records).

    Options: ``part`` intrasentence|intersentence; ``label`` bias_type (one row per example,
    4 classes, as the paper) or sentence_label (one row per sentence, 3 classes);
    ``sentence`` which candidate is shown with the context for bias_type (stereotype default).
    """
    known = {"part", "label", "sentence"}
    unknown = set(options) - known
    if unknown:
        raise DataError(f"stereoset loader: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    part = options.get("part", "intrasentence")
    label_kind = options.get("label", "bias_type")
    shown = options.get("sentence", "stereotype")
    if part not in ("intrasentence", "intersentence"):
        raise DataError(f"stereoset loader: option part={part!r} must be intrasentence or intersentence")
    if label_kind not in ("bias_type", "sentence_label"):
        raise DataError(f"stereoset loader: option label={label_kind!r} must be bias_type or sentence_label")
    if shown not in ("stereotype", "anti-stereotype", "unrelated"):
        raise DataError(f"stereoset loader: option sentence={shown!r} must be stereotype, anti-stereotype or unrelated")
    p = resolve_path(path, "stereoset")
    data = _read_json(p)
    if not isinstance(data, dict) or not all(k in data for k in STEREOSET_SENTENCE_LABELS.values()):
        raise DataError(f"{p}: expected an object with keys stereotype, anti-stereotype, unrelated")
    out = Loaded()
    kinds = list(STEREOSET_SENTENCE_LABELS.values())
    row_no = 0
    for kind in (kinds if label_kind == "sentence_label" else [shown]):
        for rec in data[kind]:
            row_no += 1
            ctx = rec.get("context") or ""
            is_intra = "BLANK" in ctx
            if (part == "intrasentence") != is_intra:
                continue
            sid = rec.get("id")
            if label_kind == "bias_type":
                text = f"{ctx}\n{rec.get('sentence', '')}".strip() if part == "intersentence" else rec.get("sentence")
                out.add(example_id=f"stereoset-{sid}", text=text, pair=ctx, label=rec.get("bias_type"),
                        doc_id=sid, source=str(p.name), row_number=row_no,
                        meta={"target": rec.get("target"), "sentence_kind": kind, "part": part})
            else:
                out.add(example_id=f"stereoset-{sid}-{kind}", text=rec.get("sentence"), pair=ctx,
                        label=STEREOSET_SENTENCE_LABELS.get(rec.get("label"), str(rec.get("label"))),
                        doc_id=sid, source=str(p.name), row_number=row_no,
                        meta={"target": rec.get("target"), "bias_type": rec.get("bias_type"), "part": part})
    return out


# ----------------------------------------------------------------------------- ContractNLI
def load_contractnli(path: str, options: dict[str, Any]) -> Loaded:
    """ContractNLI official JSON files in one folder; the official splits are kept.

    Options: ``train_file``, ``val_file``, ``test_file`` (file names in ``path`` or absolute).
    One example per (document, hypothesis): text = contract, pair = hypothesis.
    """
    known = {"train_file", "val_file", "test_file"}
    unknown = set(options) - known
    if unknown:
        raise DataError(f"contractnli loader: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    folder = resolve_path(path, "contractnli")
    files = {
        "train": options.get("train_file", "train_truncated.json"),
        "val": options.get("val_file", "dev.json"),
        "test": options.get("test_file", "test.json"),
    }
    out = Loaded()
    for split, name in files.items():
        if not name:
            continue
        fp = Path(name) if Path(name).is_absolute() else folder / name
        if not fp.exists():
            raise DataError(f"contractnli {split} file not found: {fp}. How to get it: {HOW_TO_GET['contractnli']}")
        data = _read_json(fp)
        try:
            labels = data["labels"]
            docs = data["documents"]
        except (KeyError, TypeError):
            raise DataError(f"{fp}: expected the official ContractNLI schema with 'documents' and 'labels'") from None
        row_no = 0
        for doc in docs:
            anns = (doc.get("annotation_sets") or [{}])[0].get("annotations", {})
            for key in sorted(anns, key=lambda k: int(k.split("-")[-1]) if k.split("-")[-1].isdigit() else 0):
                row_no += 1
                hyp = labels.get(key, {}).get("hypothesis")
                out.add(example_id=f"contractnli-{doc.get('id')}-{key}", text=doc.get("text"), pair=hyp,
                        label=anns[key].get("choice"), split=split, doc_id=str(doc.get("id")), source=fp.name,
                        row_number=row_no, meta={"hypothesis_key": key, "file_name": doc.get("file_name"),
                                                 "document_type": doc.get("document_type")})
    return out


# ----------------------------------------------------------------------------- generic
GENERIC_FIELDS = ("id", "text", "label", "pair", "split", "doc_id")


def _detect_format(p: Path, fmt: str) -> str:
    if fmt == "json":
        return "jsonl"  # one JSON object per line, as for a .json file with format auto
    if fmt != "auto":
        return fmt
    if p.is_dir():
        return "delta" if (p / "_delta_log").exists() else "parquet"
    ext = p.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(ext, "")


def load_generic(path: str, options: dict[str, Any], columns: dict[str, str], fmt: str = "auto",
                 spark=None) -> Loaded:
    """JSONL / CSV / Parquet / Delta with a column mapping ``{our field: source column}``.

    Our fields: ``text`` and ``label`` (required; default to columns of those names), ``id``,
    ``pair``, ``split``, ``doc_id``. ``fmt`` ``auto`` goes by the extension (``.jsonl``,
    ``.ndjson``, ``.json``: one JSON object per line; ``.csv``; ``.parquet``; a folder: Delta
    if it has a ``_delta_log``, else Parquet); ``json`` means JSON Lines too.
    Missing ids become content hashes. Lines that are not UTF-8 or not JSON become rows with
    ``decode_error`` (stored in ``rejects``); a missing mapped column fails the whole file.
    """
    unknown = set(columns) - set(GENERIC_FIELDS)
    if unknown:
        raise DataError(f"generic loader: dataset.columns has unknown field(s) {sorted(unknown)}; "
                        f"known: {list(GENERIC_FIELDS)}")
    for req in ("text", "label"):
        columns.setdefault(req, req)
    p = resolve_path(path, "generic")
    kind = _detect_format(p, fmt)
    if kind == "":
        raise DataError(f"{p}: unsupported file type '{p.suffix}'; use .jsonl, .csv, .parquet or a Delta folder "
                        f"(or set dataset.format)")
    out = Loaded()
    if kind == "jsonl":
        records = _iter_jsonl(p, out)
    elif kind == "csv":
        records = _iter_csv(p, out)
    elif kind in ("parquet", "delta"):
        records = _iter_table(p, kind, spark)
    else:
        raise DataError(f"{p}: unsupported format {kind!r}")
    seen_cols: set[str] | None = None
    n_records = 0
    for row_no, rec in records:
        n_records += 1
        if seen_cols is None:
            seen_cols = set(rec)
            missing = [f"{ours} -> '{col}'" for ours, col in columns.items() if col not in seen_cols]
            if missing:
                raise DataError(f"{p}: missing column(s) {', '.join(missing)} (columns present: {sorted(seen_cols)}); "
                                f"fix dataset.columns in the config")
        text = rec.get(columns["text"])
        label = rec.get(columns["label"])
        ex_id = rec.get(columns["id"]) if "id" in columns else None
        pair = rec.get(columns["pair"]) if "pair" in columns else None
        out.add(
            example_id=str(ex_id) if ex_id not in (None, "") else stable_id(text, pair, label),
            text=None if text is None else str(text), pair=None if pair is None else str(pair),
            label=None if label is None else str(label),
            split=rec.get(columns["split"]) if "split" in columns else None,
            doc_id=str(rec.get(columns["doc_id"])) if "doc_id" in columns else None,
            source=p.name, row_number=row_no,
        )
    if n_records == 0 and not out.rows:
        raise DataError(f"{p}: the file has no data rows (it is empty)")
    return out


def _iter_jsonl(p: Path, out: Loaded):
    with open(p, "rb") as fh:
        for row_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                out.add(example_id=f"{p.name}#row{row_no}", source=p.name, row_number=row_no,
                        decode_error=f"undecodable text (not UTF-8: {e.reason} at byte {e.start})",
                        meta={"raw": raw[:200].decode("utf-8", "replace")})
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.add(example_id=f"{p.name}#row{row_no}", source=p.name, row_number=row_no,
                        decode_error=f"not valid JSON: {e.msg} at column {e.colno}", meta={"raw": line[:200]})
                continue
            if not isinstance(rec, dict):
                out.add(example_id=f"{p.name}#row{row_no}", source=p.name, row_number=row_no,
                        decode_error=f"expected a JSON object, got {type(rec).__name__}", meta={"raw": line[:200]})
                continue
            yield row_no, rec


def _iter_csv(p: Path, out: Loaded):
    raw = p.read_bytes()
    lines = raw.splitlines(keepends=True)
    if not lines:
        return
    try:
        header = next(csv.reader([lines[0].decode("utf-8-sig")]))
    except UnicodeDecodeError:
        raise DataError(f"{p}: the header line is not UTF-8") from None
    buf = []
    for row_no, line in enumerate(lines[1:], start=2):
        try:
            buf.append((row_no, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            out.add(example_id=f"{p.name}#row{row_no}", source=p.name, row_number=row_no,
                    decode_error=f"undecodable text (not UTF-8: {e.reason} at byte {e.start})",
                    meta={"raw": line[:200].decode("utf-8", "replace")})
    # Re-parse decodable lines together so quoted newlines still work.
    reader = csv.reader(io.StringIO("".join(t for _, t in buf)))
    for values in reader:
        if not values:
            continue
        # line_num counts physical lines read so far: map it back to the file's line number.
        row_no = buf[min(reader.line_num, len(buf)) - 1][0]
        yield row_no, dict(zip(header, values))


def _iter_table(p: Path, kind: str, spark):
    if spark is None and kind != "parquet":
        raise DataError(f"{p}: reading a Delta table needs a Spark session")
    try:
        if kind == "parquet" and spark is None:
            import pyarrow.parquet as pq

            for i, rec in enumerate(pq.read_table(p).to_pylist(), start=1):
                yield i, rec
            return
        df = spark.read.format(kind).load(str(p))
        for i, r in enumerate(df.toLocalIterator(), start=1):
            yield i, r.asDict()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or mislabelled file is bad input, not a crash
        detail = str(e)
        jx = getattr(e, "java_exception", None)  # py4j: the Java message says what was wrong
        if jx is not None:
            try:
                detail = str(jx.toString())
            except Exception:  # noqa: BLE001 - keep the Python message
                pass
        first = (detail.strip().splitlines() or [""])[0][:300]
        raise DataError(f"{p}: not a readable {kind} {'table' if kind == 'delta' else 'file'} "
                        f"({type(e).__name__}: {first})") from None


LOADERS: dict[str, Callable[..., Loaded]] = {"stereoset": load_stereoset, "contractnli": load_contractnli}


def load_dataset(dataset_cfg, spark=None) -> Loaded:
    """Dispatch on ``dataset.loader``."""
    if dataset_cfg.loader == "generic":
        return load_generic(dataset_cfg.path, dict(dataset_cfg.options), dict(dataset_cfg.columns),
                            dataset_cfg.format, spark=spark)
    return LOADERS[dataset_cfg.loader](dataset_cfg.path, dict(dataset_cfg.options))
