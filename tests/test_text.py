"""Tests for minimagen.text: the frozen text encoder (MiniLM offline; T5 and BERT folders)."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from minimagen import text
from minimagen.text import TextEncoder, pooled

SHORT = "a red circle"
LONG = " ".join(["a big blue square beside a small green triangle"] * 10)  # ~90 tokens


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm", max_length=32, cache=False)


@pytest.fixture(scope="module")
def minilm_cached():
    return TextEncoder("minilm", max_length=32, cache=True, cache_size=3)


# ---------------------------------------------------------------------------------------------------- MiniLM


def test_shapes_dtype_and_mask(minilm):
    tokens, mask = minilm.encode([SHORT, "a green square in the top left corner"])
    assert minilm.dim == 384 and minilm.max_length == 32 and minilm.name == "minilm"
    assert tokens.shape == (2, 32, 384) and tokens.dtype == torch.float32
    assert mask.shape == (2, 32) and mask.dtype == torch.bool
    # Real tokens come first ([CLS] ... [SEP]), padding after; their count is the tokenizer's length.
    n_real = len(minilm.tokenizer(SHORT)["input_ids"])
    assert n_real == 5  # [CLS] a red circle [SEP]
    assert mask[0].sum().item() == n_real
    assert mask[0, :n_real].all() and not mask[0, n_real:].any()
    # Padding positions carry zeros; real ones do not.
    assert (tokens[0, n_real:] == 0).all()
    assert (tokens[0, :n_real].abs().sum(-1) > 0).all()


def test_frozen(minilm):
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    tokens, _ = minilm.encode([SHORT])
    assert not tokens.requires_grad


def test_deterministic_and_batch_independent(minilm):
    a, mask_a = minilm.encode([SHORT])
    b, mask_b = minilm.encode(["something else entirely", SHORT, "a third prompt"])
    c, _ = minilm.encode([SHORT])
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    # other rows in the batch change nothing but float32 round-off (the kernels block a batch of 3 differently
    # from a batch of 1: 1.6e-6 at most on values up to ~6, seen with oneDNN on 2 threads)
    torch.testing.assert_close(a[0], b[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask_a[0], mask_b[1])


def test_truncation_warns(minilm):
    with pytest.warns(UserWarning, match=r"1 of 2 prompts .*max_length=32"):
        tokens, mask = minilm.encode([LONG, SHORT])
    assert tokens.shape == (2, 32, 384)
    assert mask[0].all()  # the truncated prompt fills every position, [SEP] included


def test_prompt_errors(minilm):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        minilm.encode([])
    with pytest.raises(TypeError, match=r"\[prompt\]"):
        minilm.encode(SHORT)
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        minilm.encode([SHORT, 3])


def test_constructor_errors():
    with pytest.raises(ValueError, match="non-empty"):
        TextEncoder("")
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder("minilm", max_length=1)
    with pytest.raises(ValueError, match="512 positions"):
        TextEncoder("minilm", max_length=1000)


def test_cache_counts_and_equality(minilm, minilm_cached):
    minilm_cached.clear_cache()
    prompts = [SHORT, "a blue square", SHORT]
    first_tokens, first_mask = minilm_cached.encode(prompts)
    # Two distinct prompts encoded, the repeated one served from them.
    assert minilm_cached.cache_info()[:3] == (1, 2, 2)
    second_tokens, second_mask = minilm_cached.encode([SHORT, "a green star"])
    assert minilm_cached.cache_info()[:3] == (2, 3, 3)
    # Cached and uncached give the same rows.
    plain_tokens, plain_mask = minilm.encode(prompts)
    torch.testing.assert_close(first_tokens, plain_tokens, rtol=1e-6, atol=1e-6)
    assert torch.equal(first_mask, plain_mask)
    torch.testing.assert_close(second_tokens[0], plain_tokens[0], rtol=0, atol=0)
    # cache_size=3: adding a fourth prompt evicts the least recently used ("a blue square").
    minilm_cached.encode(["a yellow cross"])
    assert "a blue square" not in minilm_cached._cache and SHORT in minilm_cached._cache
    minilm_cached.clear_cache()
    assert minilm_cached.cache_info()[:3] == (0, 0, 0)


def test_pooled_is_masked_mean():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 3, generator=gen)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    expected = torch.stack([(tokens[0, 0] + tokens[0, 1]) / 2, tokens[1].mean(0)])
    torch.testing.assert_close(pooled(tokens, mask), expected)
    # An all-padding row pools to zeros instead of dividing by zero.
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert (pooled(tokens[:1], empty) == 0).all()
    with pytest.raises(ValueError, match="pooled expects"):
        pooled(tokens, mask[:, :3])


def _cosine(encoder, a, b):
    tokens, mask = encoder.encode([a, b])
    p = pooled(tokens, mask)
    return torch.nn.functional.cosine_similarity(p[0], p[1], dim=0).item()


def test_semantic_sanity(minilm):
    # Measured with all-MiniLM-L6-v2 (max_length 32): 0.61 vs 0.44, and 0.80 vs 0.21.
    near = _cosine(minilm, "a red circle", "a red disc")
    far = _cosine(minilm, "a red circle", "a blue square on the right")
    assert near > far + 0.1
    near = _cosine(minilm, "a photo of a cat", "a picture of a kitten")
    far = _cosine(minilm, "a photo of a cat", "a diagram of an engine")
    assert near > far + 0.3


# --------------------------------------------------------------------------------------------- weights check


def test_random_minilm_is_the_same_architecture_with_other_weights(minilm):
    random0 = TextEncoder("minilm", max_length=16, pretrained=False, seed=0)
    again = TextEncoder("minilm", max_length=16, pretrained=False, seed=0)
    other = TextEncoder("minilm", max_length=16, pretrained=False, seed=1)
    assert random0.dim == minilm.dim and type(random0.model) is type(minilm.model)
    assert {k: v.shape for k, v in random0.model.state_dict().items()} == {
        k: v.shape for k, v in minilm.model.state_dict().items()}
    assert random0.weights_sha256() == again.weights_sha256() != other.weights_sha256()
    assert random0.weights_sha256() != minilm.weights_sha256()
    assert not any(p.requires_grad for p in random0.model.parameters())  # frozen too
    prompts = ["a large red plain circle on the left", "a small blue striped square at the top"]
    tokens, mask = random0.encode(prompts)
    ref_tokens, ref_mask = minilm.encode(prompts)
    assert torch.equal(mask, ref_mask[:, :16]) and tokens.shape == (2, 16, minilm.dim)
    assert not torch.allclose(tokens, ref_tokens[:, :16])
    assert "pretrained=False, seed=0" in repr(random0)
    state = torch.get_rng_state()
    TextEncoder("minilm", max_length=16, pretrained=False, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    with pytest.raises(TypeError, match="pretrained must be"):
        TextEncoder("minilm", pretrained="no")


def test_sha256_file_memo(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    assert text.sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    f.write_bytes(b"abcd" * 1000)  # new size: the memo must not answer with the old digest
    assert text.sha256_file(f) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_tampered_minilm_is_refused(tmp_path, monkeypatch):
    source = text.minilm_dir()
    fake = tmp_path / "minilm"
    fake.mkdir()
    for item in source.iterdir():
        if item.name != "model.safetensors":
            os.symlink(item, fake / item.name)
    weights = bytearray((source / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # one flipped byte
    (fake / "model.safetensors").write_bytes(weights)
    monkeypatch.setattr(text, "minilm_dir", lambda: fake)
    with pytest.raises(ValueError, match="SHA-256") as err:
        TextEncoder("minilm")
    assert text.MINILM_SHA256 in str(err.value) and "model.safetensors" in str(err.value)


# -------------------------------------------------------------------------------------------- other encoders


def test_tiny_t5_folder(tmp_path, minilm):
    from transformers import T5Config, T5EncoderModel

    vocab_size = len(minilm.tokenizer)
    config = T5Config(d_model=32, d_kv=8, num_layers=2, num_heads=4, d_ff=64, vocab_size=vocab_size)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(tmp_path)
    # No T5 sentencepiece model offline: the folder borrows MiniLM's WordPiece tokenizer instead.
    minilm.tokenizer.save_pretrained(tmp_path)

    encoder = TextEncoder(str(tmp_path), max_length=16)
    assert isinstance(encoder.model, T5EncoderModel) and encoder.model_type == "t5"
    assert encoder.dim == 32
    prompts = [SHORT, "a green square in the top left corner"]
    tokens, mask = encoder.encode(prompts)
    assert tokens.shape == (2, 16, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [len(minilm.tokenizer(p)["input_ids"]) for p in prompts]

    batch = minilm.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = out.last_hidden_state  # [B, L, 32]
    torch.testing.assert_close(tokens[mask], expected[mask])
    assert (tokens[~mask] == 0).all()


def test_bert_folder_matches_minilm(minilm):
    encoder = TextEncoder(str(text.minilm_dir()), cache=False)
    assert encoder.model_type == "bert" and type(encoder.model).__name__ == "BertModel"
    a, mask_a = encoder.encode([SHORT])
    b, mask_b = minilm.encode([SHORT])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(mask_a, mask_b)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown encoder"):
        TextEncoder("definitely-not-a-model")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        TextEncoder(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        TextEncoder(str(tmp_path))


def test_folder_without_safetensors(tmp_path):
    # Only config and tokenizer: the loader must refuse rather than look for a pickled checkpoint.
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(text.minilm_dir() / name, tmp_path / name)
    with pytest.raises(ValueError, match="safetensors"):
        TextEncoder(str(tmp_path))


def test_text_models_read_ids_and_ignore_padding():
    from minimagen.text import BagOfWords, TokenTransformer, text_model

    torch.manual_seed(0)
    ids = torch.tensor([[101, 1037, 2417, 4418, 102, 0, 0, 0]])
    mask = ids != 0
    for model in (BagOfWords(30522, 16), TokenTransformer(30522, 16, layers=2, max_length=8)):
        out = model(ids, mask)
        assert out.shape == (1, 8, 16) and torch.all(out[0, 5:] == 0)  # zero at padding
        # what stands in the padded positions does not reach the real tokens
        other = model(ids.masked_fill(~mask, 7), mask)
        torch.testing.assert_close(out, other)
    bow = BagOfWords(30522, 16)
    torch.testing.assert_close(bow(ids[:, [2, 1, 3, 0, 4]], mask[:, :5]).sort(1).values,
                               bow(ids[:, :5], mask[:, :5]).sort(1).values)  # no order: a bag
    with pytest.raises(ValueError, match="positions"):
        TokenTransformer(30522, 16, layers=1, max_length=4)(ids, mask)
    with pytest.raises(ValueError, match="text_model must be"):
        text_model("lstm", 10, 16, 1, 8)


def test_tokens_only_encoder_gives_ids(minilm):
    ids_encoder = TextEncoder("minilm-tokens", max_length=32)
    ids, mask = ids_encoder.encode([SHORT])
    _, ref_mask = minilm.encode([SHORT])
    assert ids.dtype == torch.long and ids.shape == (1, 32) and torch.equal(mask, ref_mask)
    assert ids_encoder.dim is None and ids_encoder.vocab_size == 30522 and ids_encoder.model is None
    with pytest.raises(ValueError, match="tokenizer alone"):
        ids_encoder.weights_sha256()
