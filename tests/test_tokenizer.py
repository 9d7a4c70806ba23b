"""tokenizer.load: the shipped tiny BPE (vocabulary, ChatML template, specials, compression on env text),
HF folders, the embedded SmolLM2 tokenizer built offline from its GGUF, and the errors."""

import json
import os

import pytest

from agentgen_jax import models, tokenizer
from launch import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
  return tokenizer.load("tiny")


def test_tiny_vocab_equals_the_tiny_preset(tiny):
  assert len(tiny) == models.preset("tiny").vocab_size == models.preset("small").vocab_size == 4096
  tokenizer.check_compatible(tiny, models.preset("tiny"))


def test_tiny_specials_match_the_preset_ids(tiny):
  cfg = models.preset("tiny")
  assert tiny.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
  assert tiny.eos_token == "<|im_end|>" and tiny.eos_token_id in cfg.eos_token_ids
  assert tiny.pad_token_id == cfg.pad_token_id == 0


def test_tiny_chat_template_is_chatml(tiny):
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "go to the red ball"},
              {"role": "assistant", "content": "Action: go to red ball 1"}]
  text = tiny.apply_chat_template(messages, tokenize=False)
  assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ngo to the red ball<|im_end|>\n"
                  "<|im_start|>assistant\nAction: go to red ball 1<|im_end|>\n")
  prompt = tiny.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
  assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
  ids = tiny.encode(prompt, add_special_tokens=False)
  assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2  # specials are single tokens, no BOS


def test_tiny_round_trips_and_compresses_env_text(tiny):
  texts = make_tiny_tokenizer.corpus(40, seed=123)  # a seed the shipped tokenizer was not trained on
  n_chars = n_tokens = 0
  for text in texts:
    ids = tiny.encode(text, add_special_tokens=False)
    assert tiny.decode(ids) == text
    n_chars, n_tokens = n_chars + len(text), n_tokens + len(ids)
  assert n_chars / n_tokens > 3.0
  odd = "Ünïcödé ✓ 東京 \t tabs\n\nand 12345.67"  # bytes never seen in training still round-trip
  assert tiny.decode(tiny.encode(odd, add_special_tokens=False)) == odd


def test_corpus_is_deterministic():
  assert make_tiny_tokenizer.corpus(5, seed=7) == make_tiny_tokenizer.corpus(5, seed=7)
  assert make_tiny_tokenizer.corpus(5, seed=7) != make_tiny_tokenizer.corpus(5, seed=8)


def test_hf_folder_round_trip(tiny, tmp_path):
  tiny.save_pretrained(tmp_path)
  again = tokenizer.load(str(tmp_path))
  text = "<|im_start|>user\nThought: craft 4 oak planks<|im_end|>\n"
  assert again.encode(text, add_special_tokens=False) == tiny.encode(text, add_special_tokens=False)
  assert again.chat_template == tiny.chat_template


def test_missing_path_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_tok.*not a preset"):
    tokenizer.load(str(tmp_path / "no_such_tok"))


def test_vocab_mismatch_is_named(tiny):
  with pytest.raises(ValueError, match="vocab mismatch.*4096 tokens.*vocab_size is 1000"):
    tokenizer.check_compatible(tiny, models.preset("tiny", vocab_size=1000))


@pytest.mark.slow
def test_shipped_tokenizer_is_what_the_script_trains():
  trained = json.loads(make_tiny_tokenizer.train(make_tiny_tokenizer.corpus(6000)).to_str())
  with open(os.path.join(tokenizer.TINY_DIR, "tokenizer.json")) as f:
    shipped = json.load(f)
  assert trained["model"]["vocab"] == shipped["model"]["vocab"]
  assert trained["model"]["merges"] == shipped["model"]["merges"]


@pytest.mark.slow
def test_embedded_tokenizer_from_gguf_offline(tmp_path, monkeypatch):
  monkeypatch.setenv("AGENTGEN_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tok = tokenizer.load("smollm2-135m-instruct")
  assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                 add_generation_prompt=True)
  assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
  assert tok.encode("The capital of France", add_special_tokens=False) == [504, 3575, 282, 4649]
  again = tokenizer.load("smollm2-135m-instruct")  # from the cache written by the first load
  assert len(list(tmp_path.glob("tokenizers/*"))) == 1
  assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
  assert again.chat_template == tok.chat_template
