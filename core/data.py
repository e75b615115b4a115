"""Data loading through HF ``datasets`` and vocabularies through HF ``tokenizers``.

Tasks describe their data with :class:`DataSource` (the ``tasks.<name>.data`` section of a
grid file) and call :func:`load_splits` and :func:`train_tokenizer`; neither downloads
anything unless ``path`` names a hub dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import BadInputError
from .phases import TOKENIZER, phase

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]"]
PAD, UNK, BOS, EOS, SEP, CLS = range(len(SPECIAL_TOKENS))
LOCAL_EXTENSIONS = {".jsonl.gz": "json", ".jsonl": "json", ".json": "json", ".json.gz": "json",
                    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet"}


class DataSource(BaseModel):
    """Where a task's examples come from.

    ``source: synthetic`` uses the task's built-in generator (sizes ``n_train`` etc.).
    ``source: datasets`` loads ``path`` through ``datasets.load_dataset``: a local directory
    holding ``<split>.jsonl.gz`` / ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` files, a
    single local file, or a hub dataset id (needs internet). ``columns`` maps the task's field
    names to the dataset's column names; ``splits`` maps the task's split names to the
    dataset's; ``n_*`` keep only the first rows of a split (``null``: all).
    """

    model_config = ConfigDict(extra="forbid")
    source: Literal["synthetic", "datasets"] = "synthetic"
    path: str | None = None
    name: str | None = Field(None, description="hub dataset configuration name")
    columns: dict[str, str] = Field(default_factory=dict)
    splits: dict[str, str] = Field(default_factory=dict)
    n_train: int | None = Field(2000, gt=0)
    n_validation: int | None = Field(300, gt=0)
    n_test: int | None = Field(300, gt=0)
    seed: int = Field(1234, description="data seed: generators and split shuffles, not training")

    def limit(self, split: str) -> int | None:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}.get(split)


def _local_files(path: Path, split: str) -> Path | None:
    for ext in LOCAL_EXTENSIONS:
        candidate = path / f"{split}{ext}"
        if candidate.exists():
            return candidate
    return None


def check_jsonl(file: Path, where: str) -> None:
    """Name the file and line of the first row that is not a JSON object, and refuse an empty
    file (``datasets`` would say only "An error occurred while generating the dataset")."""
    import gzip

    opener = gzip.open if file.name.endswith(".gz") else open
    rows = 0
    try:
        with opener(file, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInputError(f"{where}.path: {file} line {number}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise BadInputError(f"{where}.path: {file} line {number}: expected a JSON object, got "
                                        f"{type(row).__name__}")
                rows += 1
    except UnicodeDecodeError:
        raise BadInputError(f"{where}.path: {file}: not UTF-8 text") from None
    if rows == 0:
        raise BadInputError(f"{where}.path: {file} has no rows")


def _builder_for(file: Path) -> str:
    for ext, builder in LOCAL_EXTENSIONS.items():
        if file.name.endswith(ext):
            return builder
    raise BadInputError(f"{file}: unsupported data file type; valid: {', '.join(LOCAL_EXTENSIONS)}")


def load_splits(data: DataSource, splits: Iterable[str], where: str) -> dict:
    """Load the named splits as ``datasets.Dataset`` objects, truncated to ``n_<split>`` rows.

    ``where`` is the config path for error messages, e.g. ``tasks.sentiment.data``."""
    import datasets

    if data.source != "datasets" or not data.path:
        raise BadInputError(f"{where}.path: required when source is 'datasets' (a local folder, file, or hub id)")
    wanted = {s: data.splits.get(s, s) for s in splits}
    path = Path(data.path).expanduser()
    try:
        if path.is_dir():
            files = {}
            for ours, theirs in wanted.items():
                found = _local_files(path, theirs)
                if found is None:
                    have = sorted(p.name for p in path.iterdir())
                    raise BadInputError(
                        f"{where}.path: no file for split {theirs!r} in {path} "
                        f"(looked for {theirs}{{{','.join(LOCAL_EXTENSIONS)}}}; found {have}); "
                        f"map splits with {where}.splits, e.g. {{test: validation}}"
                    )
                if found.name.endswith((".jsonl", ".jsonl.gz")):
                    check_jsonl(found, where)
                files[ours] = str(found)
            builders = {_builder_for(Path(f)) for f in files.values()}
            if len(builders) > 1:
                raise BadInputError(f"{where}.path: mixed file types in {path}: {sorted(builders)}")
            with _quiet_datasets():
                loaded = datasets.load_dataset(builders.pop(), data_files=files)
        elif path.is_file():
            if path.name.endswith((".jsonl", ".jsonl.gz")):
                check_jsonl(path, where)
            with _quiet_datasets():
                loaded = datasets.load_dataset(_builder_for(path), data_files={"train": str(path)})
            missing = [s for s in wanted if s != "train"]
            if missing:
                raise BadInputError(f"{where}.path: a single file gives only a train split; point to a folder with {missing} too")
        elif data.path.startswith((".", "/", "~")) or data.path.count("/") > 1:
            raise BadInputError(f"{where}.path: {data.path!r} does not exist")
        else:  # a hub id such as "stanfordnlp/sst2"
            loaded = datasets.load_dataset(data.path, data.name)
            loaded = {ours: loaded[theirs] for ours, theirs in wanted.items()}
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"{where}: could not load {data.path!r}: {type(exc).__name__}: {exc}") from None

    out = {}
    for ours in wanted:
        ds = loaded[ours]
        if len(ds) == 0:
            raise BadInputError(f"{where}.path: split {wanted[ours]!r} of {data.path} has no rows")
        limit = data.limit(ours)
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
        out[ours] = ds
    return out


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars or logged tracebacks from ``datasets``: its errors reach the user as
    one BadInputError line."""
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled()
    level = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


def column(data: DataSource, field: str) -> str:
    """The dataset column that holds the task's ``field``."""
    return data.columns.get(field, field)


def require_columns(ds, data: DataSource, fields: Iterable[str], where: str) -> None:
    missing = [column(data, f) for f in fields if column(data, f) not in ds.column_names]
    if missing:
        raise BadInputError(
            f"{where}.columns: dataset has no column(s) {missing}; it has {ds.column_names}. "
            f"Map them, e.g. --set {where}.columns.{fields and list(fields)[0]}=<column>"
        )


class TokenizerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bpe", "wordpiece"] = "bpe"
    vocab_size: int = Field(4000, ge=len(SPECIAL_TOKENS) + 1)
    lowercase: bool = False
    min_frequency: int = Field(2, ge=1)


def train_tokenizer(texts: list[str], options: TokenizerOptions, cache_dir: Path):
    """Train (or load from cache) a subword tokenizer on ``texts`` (timed as the ``tokenizer`` phase).

    See :func:`_train_tokenizer`."""
    with phase(TOKENIZER):
        return _train_tokenizer(texts, options, cache_dir)


def _train_tokenizer(texts: list[str], options: TokenizerOptions, cache_dir: Path):
    """Train (or load from cache) a subword tokenizer on ``texts``.

    The cache key is a hash of the options and the texts, so every model of a task in a grid
    (and every later run on the same data) shares one vocabulary file. Special tokens have the
    fixed ids ``PAD, UNK, BOS, EOS, SEP, CLS`` = 0..5. Metaspace pre-tokenization makes
    ``decode`` give back readable text (needed for detokenized BLEU).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    digest = hashlib.sha256(json.dumps(options.model_dump(), sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    cache_dir = Path(cache_dir) / "tokenizers"
    cache_file = cache_dir / f"{options.kind}-{digest.hexdigest()[:16]}.json"
    if cache_file.exists():
        return Tokenizer.from_file(str(cache_file))

    if options.kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=options.vocab_size, min_frequency=options.min_frequency,
                                      special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=options.vocab_size, min_frequency=options.min_frequency,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if options.lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(cache_file)  # atomic: parallel runs never read a half-written file
    return tok


def pad_batch(sequences: list[list[int]], pad_id: int = PAD):
    """Right-pad token id lists into ``(ids (B, L) long, padding_mask (B, L) bool)``; True marks padding."""
    import torch

    width = max((len(s) for s in sequences), default=0) or 1
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    mask = torch.arange(width)[None, :] >= torch.as_tensor([len(s) for s in sequences])[:, None]
    return ids, mask


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator=None) -> list[list[int]]:
    """Example indices of each batch: in order, or a permutation drawn from ``generator``."""
    import torch

    if batch_size <= 0:
        raise BadInputError(f"train.batch_size: must be a positive integer (got {batch_size})")
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


LENGTH_POOL = 32  # batches of similar length are cut from pools of LENGTH_POOL * batch_size examples


def length_grouped_batches(lengths: list[int], batch_size: int, *, generator=None,
                           pool: int = LENGTH_POOL) -> list[list[int]]:
    """Shuffled batches of examples of similar length (``train.group_by_length``).

    The examples are shuffled and cut into pools of ``pool * batch_size``; each pool is sorted
    by length and cut into batches, and the batches are shuffled. A batch then pads to a length
    close to its members' own (about half the compute of random batches on sentences of 5-50
    tokens), while which examples meet and the order of batches stay random. Only the last pool
    can leave a short batch, so there are as many batches as random batching makes."""
    import torch

    batches = []
    for members in batch_indices(len(lengths), batch_size * pool, shuffle=True, generator=generator):
        members = sorted(members, key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
