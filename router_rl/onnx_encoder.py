"""An ONNX Runtime encoder for sentence-transformers models: exported once from the local weights, cached on disk.

On a CPU the torch path of :class:`~router_rl.embeddings.Embedder` spends a single prompt's time in matrix
products over a handful of rows (85% in ``aten::addmm`` for a 15-token prompt), where torch is slow; ONNX
Runtime runs the same graph with its own kernels and fusions, 1.5-2.5x faster for one prompt on one core.
:func:`ensure_export` traces the whole sentence-transformers pipeline (transformer, pooling, normalisation,
then an L2 normalisation so every backend returns unit vectors) with ``torch.onnx.export``, checks the
ONNX output against torch on probe texts, and writes into one cache directory per encoder:

    model.onnx          float32 graph (checked: cosine to torch >= 0.9999 on probe texts)
    model-int8.onnx     dynamic int8 quantisation of its MatMul weights, per channel (made on first use)
    tokenizer.json      the model's fast tokenizer (the ``tokenizers`` library runs it, no transformers import)
    encoder.json        input names, dimension, lower-casing, position limit and what the export came from

The directory is keyed by the sha256 of the model's files, so new weights get a new export; exports are
written to a temporary directory and renamed into place, so concurrent processes never see half a model.
:class:`OnnxEncoder` then needs only ``onnxruntime``, ``tokenizers`` and numpy: no torch model in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("torch", "onnx", "onnx-int8", "static")  # static: token lookup (router_rl.static_encoder)
EXPORT_VERSION = 1  # bump when the exported graph or the sidecar changes
OPSET = 17
PROBES = (
    "What is 2 + 2?",
    "  Write a haiku about routers.  ",
    "Prove that the square root of two is irrational, step by step, with every lemma stated.",
    "",
    "Übersetze: « le routeur choisit le modèle » — 路由器选择模型 🙂",
)
FP32_MIN_COSINE = 0.9999  # the export is refused below this agreement with torch on the probes
INT8_MIN_COSINE = 0.95


class EncoderExportError(RuntimeError):
    """The model cannot be exported to ONNX, or the export disagrees with torch."""


def check_backend(backend: str, where: str = "encoder backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{where} {backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    return backend


# ------------------------------------------------------------------------------------------ cache keys


def _local_dir(resolved: str) -> Path | None:
    """The directory holding the model's files: ``resolved`` itself, or its snapshot in the hub cache."""
    path = Path(resolved).expanduser()
    if path.is_dir():
        return path
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    return None


def model_fingerprint(resolved: str) -> str:
    """sha256 over the model's files (names and contents), or of its name when no local copy is found."""
    digest = hashlib.sha256(f"router-rl-onnx-export-v{EXPORT_VERSION}|opset{OPSET}".encode())
    root = _local_dir(resolved)
    if root is None:
        digest.update(resolved.encode())
        return digest.hexdigest()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda f=fh: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def export_dir(model_name: str, resolved: str, cache_dir: str | Path) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[-60:]
    return Path(cache_dir).expanduser() / "onnx" / f"{slug}-{model_fingerprint(resolved)[:16]}"


# ------------------------------------------------------------------------------------------ export


def _export(resolved: str, out: Path) -> None:
    """Trace the sentence-transformers pipeline of ``resolved`` to ``out/model.onnx`` (+ tokenizer, sidecar)."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # eager attention traces to plain ONNX ops; SDPA's mask helpers trace badly on some versions
        st = SentenceTransformer(resolved, device="cpu", model_kwargs={"attn_implementation": "eager"})
    except (TypeError, ValueError):
        st = SentenceTransformer(resolved, device="cpu")
    st.eval()
    tokenizer = getattr(st, "tokenizer", None)
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise EncoderExportError(
            f"{resolved}: the model has no fast (Rust) tokenizer; use encoder backend 'torch'"
        )
    probe = st.preprocess(["a probe", "another probe text"])
    names = [k for k, v in probe.items() if torch.is_tensor(v) and v.dim() == 2 and not v.is_floating_point()]
    if "input_ids" not in names or "attention_mask" not in names:
        raise EncoderExportError(
            f"{resolved}: expected a text encoder taking input_ids and attention_mask, got inputs {names}; "
            "use encoder backend 'torch'"
        )

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = self.st(dict(zip(names, inputs, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2.0, dim=1)

    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes checked below
        options = {
            "input_names": names,
            "output_names": ["embedding"],
            "dynamic_axes": {**dynamic, "embedding": {0: "batch"}},
            "opset_version": OPSET,
            "do_constant_folding": True,
        }
        # the TorchScript exporter needs no onnxscript; torch >= 2.5 defaults to the dynamo one, older has none
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            options["dynamo"] = False
        torch.onnx.export(
            Pipeline().eval(), tuple(probe[n] for n in names), str(out / "model.onnx"), **options
        )
    backend_tokenizer.save(str(out / "tokenizer.json"))
    transformer = st[0]
    config = getattr(getattr(transformer, "auto_model", None), "config", None)
    sidecar = {
        "export_version": EXPORT_VERSION,
        "source": resolved,
        "input_names": names,
        "dim": int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "max_position_embeddings": int(getattr(config, "max_position_embeddings", 512) or 512),
        "pad_id": int(tokenizer.pad_token_id or 0),
        "pad_token": str(tokenizer.pad_token or "[PAD]"),
    }
    (out / "encoder.json").write_text(json.dumps(sidecar, indent=2))
    with torch.no_grad():
        want = st.encode(
            list(PROBES), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
    _check(out, "model.onnx", want, FP32_MIN_COSINE)
    (out / "reference.npy").write_bytes(_npy(want))


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()


def _check(root: Path, file: str, want: np.ndarray, min_cosine: float) -> float:
    enc = OnnxEncoder(root, file=file, max_seq_length=256, threads=1)
    got = enc.encode(list(PROBES))
    cosine = float((got * want).sum(axis=1).min())
    if not cosine >= min_cosine:
        raise EncoderExportError(
            f"{root / file}: ONNX embeddings disagree with torch (least cosine {cosine:.5f} on the probe texts, "
            f"expected >= {min_cosine}); use encoder backend 'torch'"
        )
    return cosine


def _quantize(root: Path) -> None:
    """``model-int8.onnx``: int8 MatMul weights, one scale per output channel, activations quantised on the fly.

    Per-channel scales are what keep the vectors close (mean cosine to torch on the arena prompts: 0.993;
    one scale per tensor: 0.96). ``reduce_range`` keeps 7-bit weights, so that AVX2 CPUs without VNNI cannot
    saturate their 16-bit intermediate sums; on this model it costs no measurable agreement.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        target = Path(tmp) / "model-int8.onnx"
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(root / "model.onnx"),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=True,
            )
        os.replace(target, root / "model-int8.onnx")
    want = np.load(root / "reference.npy")
    _check(root, "model-int8.onnx", want, INT8_MIN_COSINE)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns on the root logger ("consider pre-processing"): not for our users."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ensure_export(model_name: str, resolved: str, cache_dir: str | Path, *, int8: bool = False) -> Path:
    """The cache directory of ``model_name``'s ONNX export, exporting (and quantising) on first use."""
    root = export_dir(model_name, resolved, cache_dir)
    if not (root / "model.onnx").is_file() or not (root / "encoder.json").is_file():
        print(f"[router-rl] exporting {model_name} to ONNX once (about a minute): {root}", file=sys.stderr)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root.parent))
        try:
            _export(resolved, staging)
            try:
                os.rename(staging, root)
            except OSError:  # another process finished first: keep its export
                if not (root / "model.onnx").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if int8 and not (root / "model-int8.onnx").is_file():
        _quantize(root)
    return root


# ------------------------------------------------------------------------------------------ the encoder


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of the texts run together, longest first: each batch holds at most ``batch_size`` texts and
    ``max_batch_tokens`` padded tokens (texts x its first, longest, text); a text longer than the budget
    runs alone. Lengths (N,) in tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        last = out[-1] if out else None
        if last is None or len(last) >= batch_size or (len(last) + 1) * lengths[last[0]] > max_batch_tokens:
            out.append([i])
        else:
            last.append(i)
    return out


class OnnxEncoder:
    """Unit-norm sentence embeddings from an exported encoder directory with ONNX Runtime.

    Args:
        root: a directory written by :func:`ensure_export`.
        file: ``model.onnx`` (float32) or ``model-int8.onnx``.
        max_seq_length: tokens kept per text (special tokens included), as sentence-transformers truncates.
        threads: ONNX Runtime intra-op threads (the session runs on the calling thread plus threads - 1).
        providers: ONNX Runtime execution providers (default: CPU).
        max_batch_tokens: most padded tokens (texts x longest) per run; a longer text runs alone.

    Texts are tokenized with the ``tokenizers`` library, sorted by length and run in batches padded to their
    longest member, at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens each. On a CPU the
    encoder's cost is per token: batching amortises the per-run overhead of short prompts (measured on one
    core: 105 -> 190 prompts/s for 15-token prompts) but padding a batch of mixed prompts to the longest
    costs more than it saves (arena prompts: 37 prompts/s at 256 tokens per run, 22 at 4,096), hence the
    small default budget; on a GPU give it a large one.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        file: str = "model.onnx",
        max_seq_length: int = 256,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        max_batch_tokens: int = 256,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root = Path(root)
        self.file = file
        self.meta: dict[str, Any] = json.loads((self.root / "encoder.json").read_text())
        limit = int(self.meta["max_position_embeddings"])
        if not 1 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length {max_seq_length} is outside 1..{limit} (the model's positions)")
        self.max_seq_length = int(max_seq_length)
        self.max_batch_tokens = int(max_batch_tokens)
        self.dim = int(self.meta["dim"])
        self.input_names: list[str] = list(self.meta["input_names"])
        self.lower = bool(self.meta.get("do_lower_case", False))
        self.pad_id = int(self.meta.get("pad_id", 0))
        self.tokenizer = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # idle pool threads sleep instead of spinning: the event loop and the other requests need those cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.root / file), options, providers=list(providers or ["CPUExecutionProvider"])
        )

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_seq_length`` (special tokens included), unpadded."""
        prepared = [t.strip().lower() if self.lower else t.strip() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(prepared)]

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        (out,) = self.session.run(["embedding"], {n: arrays[n] for n in self.input_names})
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit vectors of ``texts``."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_ids(self.token_ids(texts), batch_size=batch_size)

    def encode_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit vectors of token id sequences (special tokens included, unpadded)."""
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = [list(x) for x in ids]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for rows in plan_batches([len(x) for x in ids], batch_size, self.max_batch_tokens):
            out[rows] = self._run([ids[i] for i in rows])
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # already unit length; renormalise int8's rounding
        return out / np.maximum(norms, 1e-12)
