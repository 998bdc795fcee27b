"""The demo tokenizer: a real XLM-R tokenizer trained locally with ``tokenizers`` (no hub), on the project's sample
pairs, on an XNLI-format folder, or taken from a checkpoint already built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.demo.lineup import DEMO_NOTICE
from app.engine.models.store import DEMO_MARKER
from app.samples import sample_pairs

# Vocabulary sizes. The sample pairs are too few for more than ~1,100 pieces, so the quick-start tokenizer cuts an
# XNLI pair into 91 tokens on average (p95 167), where XLM-R's own gives roughly 50-65. Trained on the XNLI dev set
# (15 languages, 37,350 pairs), 16,000 pieces give 58.3 tokens per pair (p50 56, p95 96; 8,000: 69.9; 24,000: 53.1).
SAMPLE_VOCAB_SIZE = 4000
CORPUS_VOCAB_SIZE = 16000
MIN_VOCAB_SIZE = 100


def corpus_sentences(corpus: Path) -> list[str]:
    """Every premise and hypothesis of an XNLI-format folder (one TSV per language), for training the tokenizer."""
    from app.xnli import read_xnli

    return [sentence for pair in read_xnli(corpus) for sentence in (pair.premise, pair.hypothesis)]


def train_tokenizer(vocab_size: int = SAMPLE_VOCAB_SIZE, sentences: list[str] | None = None) -> Any:
    """An XLM-R tokenizer (SentencePiece-style unigram, XLM-R special tokens and pair template) trained locally.

    On ``sentences`` (e.g. :func:`corpus_sentences`), else on the shipped sample pairs. The vocabulary may come out
    smaller than ``vocab_size`` when the sentences hold fewer distinct pieces.
    """
    import orjson
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    if sentences is None:
        sentences = [sentence for _, premise, hypothesis, _ in sample_pairs() for sentence in (premise, hypothesis)]
    if not sentences:
        raise ValueError("no sentences to train the demo tokenizer on")
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=sorted({char for sentence in sentences for char in sentence}),  # no script left behind
        show_progress=False,
    )
    unigram.train_from_iterator(sentences, trainer)
    vocab = [(piece, float(score)) for piece, score in orjson.loads(unigram.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab)


def demo_tokenizer(
    tokenizer_corpus: Path | None = None, tokenizer_from: Path | None = None, vocab_size: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """The demo tokenizer and how it was made (recorded in each checkpoint's demo marker).

    Trained on the shipped sample pairs by default (quick start, tests); on an XNLI-format folder with
    ``tokenizer_corpus`` (realistic lengths for benchmarks); or loaded from an existing checkpoint folder with
    ``tokenizer_from`` (e.g. the base store's, so a large store needs no second training).
    """
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocabulary size {vocab_size} is too small: at least {MIN_VOCAB_SIZE} pieces")
    if tokenizer_corpus is not None and tokenizer_from is not None:
        raise ValueError("give a tokenizer corpus or a checkpoint to take the tokenizer from, not both")
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        if vocab_size is not None:
            raise ValueError("the vocabulary size is the checkpoint's when the tokenizer is taken from one")
        tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
        marker_path = tokenizer_from / DEMO_MARKER
        source: dict[str, Any] = {}
        if marker_path.is_file():
            source = dict(json.loads(marker_path.read_text(encoding="utf-8")).get("tokenizer", {}))
        source["copied_from"] = str(tokenizer_from)
        source["vocab_size"] = len(tokenizer)
        return tokenizer, source
    if tokenizer_corpus is not None:
        tokenizer = train_tokenizer(vocab_size or CORPUS_VOCAB_SIZE, corpus_sentences(tokenizer_corpus))
        return tokenizer, {"trained_on": f"corpus {tokenizer_corpus.resolve()}", "vocab_size": len(tokenizer)}
    tokenizer = train_tokenizer(vocab_size or SAMPLE_VOCAB_SIZE)
    return tokenizer, {"trained_on": "sample pairs", "vocab_size": len(tokenizer)}


def save_demo_tokenizer(folder: Path, tokenizer_corpus: Path | None = None, vocab_size: int | None = None) -> Path:
    """Train the demo tokenizer once and save it alone (with its marker), for ``tokenizer_from`` elsewhere.

    The GPU check trains it here and carries the folder, so the device spends none of its time training.
    """
    tokenizer, source = demo_tokenizer(tokenizer_corpus, None, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    marker = {"untrained": True, "tokenizer": source, "notice": DEMO_NOTICE}
    (folder / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return folder
