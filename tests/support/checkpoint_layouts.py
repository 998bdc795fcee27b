"""Checkpoint folders in the layouts users drop in, built here without any hub.

One tiny XLM-R classifier and one SentencePiece unigram model (trained on the project's own multilingual sample
sentences, with the ids XLM-R's ``sentencepiece.bpe.model`` reserves: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no pad) are
written out the ways public checkpoints ship them: a fast ``tokenizer.json`` or only the SentencePiece model (the
classic XLM-R layout, converted by transformers at load time), and weights as ``model.safetensors``,
``pytorch_model.bin`` or sharded safetensors with an index. Every layout holds the same network and vocabulary, so
every one must serve the same answers.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SENTENCEPIECE_MODEL = "sentencepiece.bpe.model"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# fairseq's dictionary puts <s> <pad> </s> <unk> at 0-3; XLM-R's tokenizer shifts every SentencePiece id by one and
# maps SentencePiece's <unk> (0) to its own <unk>.
FAIRSEQ_OFFSET = 1
XLMR_UNK_ID = 3
SPECIAL_TOKENS_MAP = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": {"content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False},
}

TokenizerFiles = Literal["tokenizer.json", "sentencepiece"]
WeightFiles = Literal["safetensors", "pytorch_model.bin", "sharded-safetensors"]


@dataclass(frozen=True)
class Layout:
    name: str
    tokenizer: TokenizerFiles
    weights: WeightFiles


LAYOUTS = (
    Layout("a-tokenizer-json", "tokenizer.json", "safetensors"),  # what save_pretrained writes today (the demo)
    Layout("b-sentencepiece-only", "sentencepiece", "safetensors"),
    Layout("c-pytorch-model-bin", "tokenizer.json", "pytorch_model.bin"),
    Layout("d-sharded-safetensors", "tokenizer.json", "sharded-safetensors"),
    Layout("classic-xlmr", "sentencepiece", "pytorch_model.bin"),  # older XNLI fine-tunes: (b) and (c) together
)


def train_sentencepiece(vocab_size: int = 1000) -> bytes:
    """A SentencePiece unigram model with XLM-R's reserved ids, trained on sentences written for this project."""
    import sentencepiece

    from app.samples import sample_pairs

    sentences = [sentence for _, premise, hypothesis, _ in sample_pairs() for sentence in (premise, hypothesis)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,  # every script of the sample sentences
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


def write_sentencepiece_tokenizer(folder: Path, model: bytes) -> None:
    """The tokenizer files of the classic XLM-R layout: no tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SENTENCEPIECE_MODEL).write_bytes(model)
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2), encoding="utf-8")


def tiny_classifier(tokenizer: Any) -> Any:
    """A tiny untrained XLM-R classifier in joeddav's label order, head calibrated so answers vary with the input."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    from app.demo.build_store import JOEDDAV_ORDER, calibrate_random_head, demo_config

    torch.manual_seed(19)
    model = XLMRobertaForSequenceClassification(demo_config("tiny", len(tokenizer), JOEDDAV_ORDER))
    model.train(False)
    calibrate_random_head(model, tokenizer)
    return model


def write_layout(folder: Path, layout: Layout, tokenizer_source: Path, model: Any) -> Path:
    """``model`` and the tokenizer in ``tokenizer_source`` saved into ``folder`` in ``layout``; checks the files."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True)
    if layout.tokenizer == "sentencepiece":
        for path in tokenizer_source.iterdir():
            shutil.copy(path, folder / path.name)
    else:
        AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True).save_pretrained(folder)
        (folder / SENTENCEPIECE_MODEL).unlink(missing_ok=True)
    if layout.weights == "pytorch_model.bin":
        import torch

        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="200KB" if layout.weights == "sharded-safetensors" else "50GB")

    names = {path.name for path in folder.iterdir()}
    assert ("tokenizer.json" in names) == (layout.tokenizer == "tokenizer.json"), names
    assert (SENTENCEPIECE_MODEL in names) == (layout.tokenizer == "sentencepiece"), names
    assert ("pytorch_model.bin" in names) == (layout.weights == "pytorch_model.bin"), names
    assert ("model.safetensors" in names) == (layout.weights == "safetensors"), names
    if layout.weights == "sharded-safetensors":
        shards = set(json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"].values())
        assert len(shards) > 1, shards
        assert shards <= names, shards
    return folder


def build_layouts(root: Path) -> dict[str, Path]:
    """Every layout of LAYOUTS under ``root``, by name; ``root / "tokenizer"`` holds the SentencePiece files alone."""
    from transformers import AutoTokenizer

    tokenizer_source = root / "tokenizer"
    write_sentencepiece_tokenizer(tokenizer_source, train_sentencepiece())
    model = tiny_classifier(AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True))
    return {layout.name: write_layout(root / layout.name, layout, tokenizer_source, model) for layout in LAYOUTS}


def xlmr_pair_ids(sentencepiece_model: Path, premise: str, hypothesis: str) -> list[int]:
    """The ids real XLM-R feeds its encoder for a pair, from SentencePiece's own ids: ``<s> A </s></s> B </s>``."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))

    def shifted(text: str) -> list[int]:
        return [XLMR_UNK_ID if piece == 0 else piece + FAIRSEQ_OFFSET for piece in processor.encode(text)]

    bos, eos = 0, 2
    return [bos, *shifted(premise), eos, eos, *shifted(hypothesis), eos]
