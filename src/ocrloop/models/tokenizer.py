"""A small byte-level BPE tokenizer built from synthetic documents, for the ``tiny`` presets.

Byte-level, so it can encode any text (nothing is ever unknown); trained offline on ground
truths of synthetic receipts, invoices, contracts and tax forms so common words are one token.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ocrloop.data.synth import sample_texts


def build_tiny_tokenizer(special_tokens: dict[str, str], vocab_size: int = 512, seed: int = 0) -> PreTrainedTokenizerFast:
    """A fast tokenizer with ``bos``/``eos``/``pad``/``unk`` plus the family's own special tokens.

    ``special_tokens`` maps attribute names (``image_token``, ...) to token strings; they become
    atomic tokens and attributes of the tokenizer (``tokenizer.image_token``).
    """
    base = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    specials = list(base.values()) + [token for token in special_tokens.values() if token not in base.values()]
    bpe = Tokenizer(models.BPE(unk_token=base["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sample_texts(400, seed=seed), trainer)
    extra = {name: token for name, token in special_tokens.items() if name not in base}
    overrides = {name: token for name, token in special_tokens.items() if name in base}
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **{**base, **overrides}, extra_special_tokens=extra)
