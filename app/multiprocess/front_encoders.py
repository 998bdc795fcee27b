"""The tokenizers of a front-end process: each served variant's ``PairEncoder``, loaded in a thread from the checkpoint
folder the engine's broadcast names and checked against the engine's by fingerprint."""

from __future__ import annotations

import logging
import threading

from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import inspect_checkpoint
from app.engine.tokenization import PairEncoder

log = logging.getLogger(__name__)


class FrontEncoders:
    """The served variants' ``PairEncoder``s in this front end, loaded in a thread from the checkpoint folders the
    engine's broadcast names, and again whenever a variant's encoder fingerprint there changes (a repository load or
    reload). An encoder is used only while its fingerprint equals the engine's; one that cannot be loaded, or loads
    different, is logged once and its variant's pairs go to the engine as text."""

    def __init__(self) -> None:
        self._wanted: dict[str, tuple[VariantSpec, str]] = {}
        self._encoders: dict[str, PairEncoder] = {}
        self._failed: set[tuple[str, str]] = set()
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._loader = threading.Thread(target=self._load, name="front-encoders", daemon=True)
        self._loader.start()

    def want(self, wanted: dict[str, tuple[VariantSpec, str]]) -> None:
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    def settled(self) -> bool:
        """Every variant the engine serves has its encoder here, or failed to get one (its pairs go as text)."""
        return all(
            (name, fingerprint) in self._failed
            or (name in self._encoders and self._encoders[name].fingerprint == fingerprint)
            for name, (_, fingerprint) in self._wanted.items()
        )

    def get(self, name: str) -> PairEncoder | None:
        encoder = self._encoders.get(name)
        wanted = self._wanted.get(name)
        return encoder if encoder is not None and wanted is not None and wanted[1] == encoder.fingerprint else None

    def _load(self) -> None:
        while not self._closed.is_set():
            if not self._changed.wait(0.1):
                continue
            self._changed.clear()
            wanted = self._wanted
            for name in set(self._encoders) - set(wanted):
                del self._encoders[name]
            for name, (spec, fingerprint) in wanted.items():
                encoder = self._encoders.get(name)
                if (encoder is not None and encoder.fingerprint == fingerprint) or (name, fingerprint) in self._failed:
                    continue
                try:
                    encoder = load_encoder(spec)
                except Exception as error:
                    log.warning("variant %s: no tokenizer in this front end, pairs go as text: %s", name, error)
                    self._failed.add((name, fingerprint))
                    continue
                if encoder.fingerprint != fingerprint:
                    log.warning("variant %s: this front end's tokenizer is not the engine's, pairs go as text", name)
                    self._failed.add((name, fingerprint))
                    continue
                self._encoders[name] = encoder

    def close(self, timeout: float | None = None) -> None:
        self._closed.set()
        self._loader.join(timeout)


def load_encoder(spec: VariantSpec) -> PairEncoder:
    """The variant's encoder as the engine builds it: the tokenizer its start-up check loads, its max_seq_len."""
    return spec.task.build_encoder(inspect_checkpoint(spec).backend_tokenizer, spec.max_seq_len)
