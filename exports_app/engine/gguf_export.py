"""Write a Llama-architecture Hugging Face folder as one GGUF file for llama.cpp and Ollama.

The ``gguf`` package writes the file; the conversion is ours (what llama.cpp's ``convert_hf_to_gguf.py`` does for
``LlamaForCausalLM``): hyperparameters under ``llama.*``, tensors renamed to llama.cpp's names, the query and key
projections permuted from Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs), the byte-level
BPE tokenizer (tokens, types, merges, special ids, pre-tokenizer) and the chat template.

Tensors are converted and written one at a time (the header first, from the safetensors headers), so the memory
used is about one tensor's, whatever the model's size. 1-D tensors (norms) stay F32, as llama.cpp keeps them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exports_app.engine.merge import ExportError

QUANTIZATIONS = ("f16", "bf16", "q8_0")
# Llama 3's pre-tokenizer split (the studio's starter model uses it): llama.cpp knows it as "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}  # fmt: skip
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Hyperparameters:
    layers: int
    hidden: int
    feed_forward: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    vocab: int
    tied: bool


def hyperparameters(config: dict[str, Any]) -> Hyperparameters:
    """The Llama facts of a ``config.json``; ``ExportError`` for an architecture or rope scaling llama.cpp would
    read differently from this converter."""
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama" and "LlamaForCausalLM" not in architectures:
        raise ExportError(
            f"GGUF export converts Llama-architecture models; this one is {', '.join(architectures) or 'unknown'}. "
            "Export merged safetensors and convert them with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ExportError(f"GGUF export does not convert {rope.get('rope_type') or rope.get('type')} rope scaling yet.")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportError("GGUF export does not convert Llama models with attention or MLP biases yet.")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return Hyperparameters(
        layers=int(config["num_hidden_layers"]), hidden=hidden, feed_forward=int(config["intermediate_size"]),
        heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        context=int(config.get("max_position_embeddings") or 0),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)),
    )  # fmt: skip


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face tensor; None for tensors llama.cpp does not read (rotary caches)."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    match = LAYER_NAME.fullmatch(hf_name)
    if match and match[2] in LAYER_TENSORS:
        return f"blk.{match[1]}.{LAYER_TENSORS[match[2]]}.weight"
    raise ExportError(f"GGUF export does not know the tensor {hf_name} (not a plain Llama model?).")


def permute_for_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face stores each head's rotary dimensions as two halves; llama.cpp rotates adjacent pairs.

    Rows of head h go from [x0 … x(d/2-1), y0 … y(d/2-1)] to [x0, y0, x1, y1, …] (``convert_hf_to_gguf.py``'s
    ``LlamaModel.permute``).
    """
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


# --- the tokenizer ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    eot: int | None
    pad: int | None
    add_bos: bool
    chat_template: str


def vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """The byte-level BPE tokenizer of ``folder`` as llama.cpp's "gpt2" tokenizer model."""
    import gguf
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError("The model has no tokenizer.json: GGUF export needs the fast tokenizer's file.")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise ExportError(
            "GGUF export converts byte-level BPE tokenizers (Llama 3 style, as the studio's starter model has); this "
            "one is a SentencePiece-style or other tokenizer. Export merged safetensors and convert them with "
            "llama.cpp's convert_hf_to_gguf.py."
        )
    pre = _pre_tokenizer(spec.get("pre_tokenizer") or {})
    by_id = {int(index): token for token, index in model["vocab"].items()}
    special = {int(entry["id"]): bool(entry.get("special")) for entry in spec.get("added_tokens") or []}
    for entry in spec.get("added_tokens") or []:
        by_id[int(entry["id"])] = entry["content"]
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in special:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if special[index] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []]
    settings = _json(folder / "tokenizer_config.json")
    ids = {token: index for index, token in by_id.items()}

    def special_id(name: str) -> int | None:
        value = settings.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return ids.get(value) if isinstance(value, str) else None

    bos = special_id("bos_token")
    tokenizer = Tokenizer.from_file(str(path))
    encoded = tokenizer.encode("a", add_special_tokens=True).ids
    template = settings.get("chat_template") or ""
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return Vocabulary(
        tokens=tokens, types=[int(kind) for kind in types], merges=merges, pre=pre, bos=bos,
        eos=special_id("eos_token"), eot=ids.get("<|eot_id|>"), pad=special_id("pad_token"),
        add_bos=bool(encoded) and bos is not None and encoded[0] == bos, chat_template=str(template),
    )  # fmt: skip


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer (how text is split before BPE)."""
    steps = spec.get("pretokenizers") if spec.get("type") == "Sequence" else [spec]
    patterns = [step.get("pattern", {}).get("Regex") for step in steps or [] if step.get("type") == "Split"]
    if patterns == [LLAMA3_SPLIT]:
        return "llama-bpe"
    if not patterns and any(step.get("type") == "ByteLevel" and step.get("use_regex", True) for step in steps or []):
        return "gpt-2"
    raise ExportError(
        "GGUF export knows the Llama 3 and GPT-2 pre-tokenizers; this tokenizer splits text another way, which "
        "llama.cpp would tokenize differently."
    )


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- writing ----------------------------------------------------------------------------------------------------


def write_gguf(folder: Path, output: Path, *, quantization: str, name: str, progress: Progress | None = None) -> Path:
    """Write the model in ``folder`` (a merged Llama model, safetensors) as ``output`` in ``quantization``.

    ``quantization`` is ``f16``, ``bf16`` or ``q8_0`` (2-D tensors; Q8_0 tensors whose rows are not a multiple of
    32 stay F16). Returns ``output``; raises ``ExportError`` for a model this converter does not handle.
    """
    import gguf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"Choose a GGUF quantization among {', '.join(QUANTIZATIONS)}.")
    config = _json(folder / "config.json")
    facts = hyperparameters(config)
    vocab = vocabulary(folder, facts.vocab)
    plan = list(_tensor_plan(folder, facts, quantization))
    writer = gguf.GGUFWriter(str(output), "llama")
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization]  # fmt: skip
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    if quantization == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(facts.context)
    writer.add_embedding_length(facts.hidden)
    writer.add_block_count(facts.layers)
    writer.add_feed_forward_length(facts.feed_forward)
    writer.add_head_count(facts.heads)
    writer.add_head_count_kv(facts.kv_heads)
    writer.add_rope_dimension_count(facts.head_dim)
    writer.add_rope_freq_base(facts.rope_theta)
    writer.add_layer_norm_rms_eps(facts.rms_eps)
    writer.add_vocab_size(len(vocab.tokens))
    _add_vocabulary(writer, vocab)
    for entry in plan:
        writer.add_tensor_info(entry.name, entry.byte_shape, np.dtype(np.uint8), entry.nbytes, raw_dtype=entry.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for done, entry in enumerate(plan, start=1):
        writer.write_tensor_data(entry.convert())
        if progress is not None:
            progress(done / len(plan))
    writer.close()
    return output


def _add_vocabulary(writer: Any, vocab: Vocabulary) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for value, add in ((vocab.bos, writer.add_bos_token_id), (vocab.eos, writer.add_eos_token_id),
                       (vocab.eot, writer.add_eot_token_id), (vocab.pad, writer.add_pad_token_id)):  # fmt: skip
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


@dataclass(frozen=True)
class _Tensor:
    name: str
    qtype: Any  # gguf.GGMLQuantizationType
    byte_shape: tuple[int, ...]
    nbytes: int
    convert: Callable[[], np.ndarray]


def _tensor_plan(folder: Path, facts: Hyperparameters, quantization: str) -> Iterator[_Tensor]:
    """What goes in the file, in order, each with a function that reads and converts it when it is written."""
    import gguf

    shapes = _safetensors_shapes(folder)
    if "lm_head.weight" in shapes and facts.tied:
        del shapes["lm_head.weight"]  # llama.cpp reuses token_embd for a tied output layer
    wanted = {
        "f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[quantization]  # fmt: skip
    for hf_name, (file, shape) in shapes.items():
        name = gguf_name(hf_name)
        if name is None:
            continue
        if len(shape) == 1:
            qtype = gguf.GGMLQuantizationType.F32
        elif wanted == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16
        else:
            qtype = wanted
        byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
        nbytes = int(np.prod(byte_shape))
        heads = (
            facts.heads if name.endswith("attn_q.weight") else facts.kv_heads if name.endswith("attn_k.weight") else 0
        )
        yield _Tensor(name, qtype, tuple(byte_shape), nbytes, _converter(file, hf_name, qtype, heads))


def _converter(file: Path, hf_name: str, qtype: Any, heads: int) -> Callable[[], np.ndarray]:
    def convert() -> np.ndarray:
        import gguf

        data = read_tensor(file, hf_name)
        if heads:
            data = permute_for_rope(data, heads)
        if qtype == gguf.GGMLQuantizationType.F32:
            out = data.astype(np.float32)
        elif qtype == gguf.GGMLQuantizationType.F16:
            out = data.astype(np.float16)
        else:
            out = gguf.quants.quantize(data.astype(np.float32), qtype)
        return np.ascontiguousarray(out).view(np.uint8)

    return convert


def read_tensor(file: Path, name: str) -> np.ndarray:
    """One tensor of a safetensors file as float32 (bfloat16 included, which numpy cannot read itself)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name).to(torch.float32).numpy()


def _safetensors_shapes(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name → (file, shape), from the headers of the folder's safetensors files (no weights read)."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                found[name] = (file, tuple(int(size) for size in info["shape"]))
    if not found:
        raise ExportError("The merged model has no safetensors weights.")
    return found
