"""Session fixtures: the evaluation data's NQ rows and GSM8K prompt, and tiny random-weight models saved to disk.

Real LLMLingua-2 / GPT-2 weights cannot be downloaded here, so the model paths
are driven end to end by tiny models built from scratch: a WordPiece tokenizer
and a BPE tokenizer trained on passages the tests make (:mod:`samples`, so the
models need no evaluation data), a 2-layer BERT token classifier
(2 labels) and a 2-layer GPT-2. Saved with ``save_pretrained`` and loaded back
through the same ``from_pretrained(local_files_only=True)`` path as real ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import corpus

import evaldata


# Tests using these two carry the evaldata marker by way of tests/conftest.py (DATA_FIXTURES).
@pytest.fixture(scope="session")
def nq_rows() -> list[dict[str, object]]:
    return evaldata.nq_rows()


@pytest.fixture(scope="session")
def gsm8k_prompt() -> str:
    return evaldata.text(evaldata.GSM8K_PROMPT)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT token classifier (keep/drop) with a WordPiece tokenizer, saved to a folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    backend.post_processor = processors.BertProcessing(
        ("[SEP]", backend.token_to_id("[SEP]")), ("[CLS]", backend.token_to_id("[CLS]"))
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # fixture only: the same tiny weights every session
    model = BertForTokenClassification(config)
    torch.random.set_rng_state(generator_state)
    folder = tmp_path_factory.mktemp("tiny-classifier")
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with a byte-level BPE tokenizer trained on made-up passages, saved to a folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    config = GPT2Config(vocab_size=backend.get_vocab_size(), n_positions=1024, n_embd=32, n_layer=2, n_head=2)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    model = GPT2LMHeadModel(config)
    torch.random.set_rng_state(generator_state)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
