"""SearchQA: answer normalisation and scores, the tag format, retrieval, splits, the real-data loader,
expert replay, fuzzing and determinism."""

import json

import env_checks
import pytest

import envs
from envs.searchqa import (
  BM25Index,
  SearchQAEnv,
  candidate_spans,
  exact_match,
  f1_score,
  malformed_feedback,
  normalize_answer,
  parse_tags,
)
from envs.searchqa_data import Doc, generate, load


@pytest.fixture(scope="module")
def env():
  return envs.make("searchqa")


# ---- normalisation and scores -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Eiffel  Tower!", "eiffel tower"),
    ("a cat, an owl", "cat owl"),
    ("U.S.A.", "usa"),
    ("Anthem of the Theatre", "anthem of theatre"),  # articles only as whole words
    ("  Théâtre\tRoyal\n", "théâtre royal"),
    ("'1843'", "1843"),
    ("", ""),
])
def test_normalize_answer_hand_cases(text, expected):
  assert normalize_answer(text) == expected


def test_exact_match_against_any_gold_answer():
  assert exact_match("the Oslo.", ["Bergen", "oslo"]) == 1.0
  assert exact_match("Oslo city", ["Oslo"]) == 0.0
  assert exact_match("", ["Oslo"]) == 0.0


def test_f1_hand_computed():
  # "new york city" vs "new york": precision 2/3, recall 1 -> F1 = 0.8
  assert f1_score("New York City", ["Boston", "new york"]) == pytest.approx(0.8)
  assert f1_score("Boston", ["new york"]) == 0.0
  assert f1_score("the", ["a"]) == 1.0  # both normalise to nothing


# ---- the tag format -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<search>capital of Velaria</search>", "<search>capital of Velaria</search>"),
    ("<think>I should look</think>\n<search> Orvel  Daskin </search>", "<search>Orvel Daskin</search>"),
    ("<answer>1843</answer><search>x</search>", "<answer>1843</answer>"),  # the first complete tag wins
    ("<think><answer>guess</answer></think><search>q</search>", "<search>q</search>"),  # not inside think
    ("<ANSWER>Oslo</ANSWER>", "<answer>Oslo</answer>"),
    ("Action: search[x]", None),
    ("<search></search>", None),
    ("<answer>   </answer>", None),
    ("<search>unclosed", None),
    ("</answer><answer>", None),
    ("", None),
])
def test_parse_tags(text, expected):
  assert parse_tags(text) == expected


def test_format_action_round_trips_through_parse(env):
  for action in ["<search>who founded it</search>", "<answer>Oslo</answer>"]:
    assert env.parse(env.format_action(action)) == action
    assert env.parse(env.format_action(action, thought="I should check.")) == action


@pytest.mark.parametrize("text, says", [
    ("I think it is Oslo", "no <search> or <answer> tag"),
    ("<search>  </search>", "tag is empty"),
    ("<answer>Oslo", "not closed"),
])
def test_malformed_output_is_an_invalid_step_with_feedback(env, text, says):
  task = env.tasks("test", "easy")[0]
  env.reset(task)
  step = env.act(text)
  assert says in malformed_feedback(text)
  assert step.info["invalid"] and not step.done and step.reward == 0.0
  assert says in step.observation.text and "Question:" in step.observation.text


# ---- retrieval and episodes ---------------------------------------------------------------------------

def test_search_returns_top_k_passages_with_the_entity_first(env):
  task = env.tasks("test", "easy")[0]
  query = env.question(task).expert_queries[0]
  env.reset(task)
  step = env.step(f"<search>{query}</search>")
  text = step.observation.text
  assert text.startswith("<information>") and text.endswith("</information>")
  assert text.count("\nDoc ") + 1 == 3 and f"Doc 1(Title: {query})" in text
  wide = SearchQAEnv(top_k=5)
  wide.reset(task)
  assert wide.step(f"<search>{query}</search>").observation.text.count("(Title: ") == 5


def test_unknown_words_find_nothing():
  index = BM25Index([Doc("Alpha", "alpha beta"), Doc("Gamma", "gamma delta")])
  assert index.search("zzzz qqqq", 3) == []
  assert index.search("gamma", 3) == [1]


def test_answer_ends_the_episode_with_em_reward(env):
  task = env.tasks("test", "hard")[0]
  gold = env.question(task).answers[0]
  env.reset(task)
  wrong = env.step("<answer>Atlantis</answer>")
  assert wrong.done and not wrong.success and wrong.reward == 0.0 and wrong.score == 0.0
  assert wrong.info["em"] == 0.0 and gold not in wrong.observation.text
  env_checks.check_step(wrong, "searchqa")
  env.reset(task)
  right = env.step(f"<answer>the {gold.lower()}.</answer>")  # normalised before comparing
  assert right.done and right.success and right.reward == 1.0 and right.score == 1.0
  assert right.info["f1"] == 1.0
  after = env.step("<search>anything</search>")
  assert after.info["invalid"] and after.done


def test_generated_facts_are_only_in_the_corpus(env):
  """Each gold answer is stated by the passages that the expert's searches retrieve."""
  for difficulty in ("easy", "hard"):
    for task in env.tasks("test", difficulty)[:50]:
      env.reset(task)
      seen = " ".join(env.step(a).observation.text for a in env.expert(task)[:-1])
      assert env.question(task).answers[0] in seen, task


def test_candidate_spans_hand_case():
  text = "In which year was the founder of the Dorei Observatory born? It was 1818, in Keiqavport."
  assert candidate_spans(text) == ["Dorei Observatory", "Keiqavport", "1818"]


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_listed_actions_contain_the_expert_path(env, difficulty):
  """The `choose` mode (which picks among valid_actions, the first 32) can follow the expert."""
  for task in env.tasks("test", difficulty)[:50]:
    obs = env.reset(task)
    for action in env.expert(task):
      assert action in obs.valid_actions[:32], (task, action)
      assert len(set(obs.valid_actions)) == len(obs.valid_actions)
      assert all(env.parse(a) == a for a in obs.valid_actions)
      obs = env.step(action).observation


# ---- splits and difficulty ----------------------------------------------------------------------------

def test_splits_are_disjoint_down_to_the_entities(env):
  train, test = env.tasks("train"), env.tasks("test")
  assert train and test and not set(train) & set(test)
  assert set(env.tasks("test", "easy")) | set(env.tasks("test", "hard")) == set(test)
  train_entities = {q for t in train for q in env.question(t).expert_queries}
  test_entities = {q for t in test for q in env.question(t).expert_queries}
  assert not train_entities & test_entities
  assert all(t.startswith("synth1hop/") for t in env.tasks("test", "easy"))
  assert all(len(env.expert(t)) == 3 for t in env.tasks("test", "hard")[:50])  # two searches + answer


def test_bad_split_or_task_is_a_one_line_error(env):
  with pytest.raises(ValueError, match="valid: train, test"):
    env.tasks("dev")
  with pytest.raises(ValueError, match="unknown searchqa task"):
    env.reset("nq/999999")


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_expert_replay_succeeds(env, difficulty):
  rate, failed = env_checks.expert_success_rate(env, "test", difficulty, n=50)
  assert rate >= 0.95, failed


def test_fuzz_with_malformed_outputs(env):
  outputs = env_checks.malformed_outputs(seed=0, n=2000)
  valid = ["<think>hm</think><search>Velaria capital</search>", "<answer>Oslo</answer>"]
  invalid = env_checks.fuzz(env, env.tasks("test")[0], outputs + valid)
  assert invalid == len(outputs)  # none of them holds a complete non-empty tag


def test_same_seed_same_data_and_other_seed_other_data():
  docs_a, qa_a = generate(0)
  docs_b, qa_b = generate(0)
  assert docs_a == docs_b and qa_a == qa_b
  docs_c, _ = generate(1)
  assert docs_c != docs_a


def test_first_observation_is_the_same_in_two_processes(env):
  first = env_checks.first_observation_in_process("searchqa", index=7)
  second = env_checks.first_observation_in_process("searchqa", index=7)
  assert first == second
  task, text, _ = first
  assert task == env.tasks("test")[7] and text == env.reset(task).text


# ---- real data ----------------------------------------------------------------------------------------

def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def real_dir(tmp_path):
  _write_jsonl(tmp_path / "corpus.jsonl", [
      {"id": "0", "title": "Oslo", "text": "Oslo is the capital of Norway."},
      {"id": "1", "contents": '"Edvard Munch"\nEdvard Munch painted The Scream in 1893.'},
      {"id": "2", "title": "Bergen", "text": "Bergen is a city on the west coast of Norway."},
      {"id": "3", "contents": '"The Scream"\nThe Scream hangs in the National Museum in Oslo.'},
  ])
  _write_jsonl(tmp_path / "nq" / "train.jsonl", [
      {"id": "train_0", "question": "what is the capital of norway",
       "golden_answers": ["Oslo", "Christiania"]},
  ])
  _write_jsonl(tmp_path / "nq" / "test.jsonl", [
      {"id": "test_0", "question": "when was the scream painted", "golden_answers": ["1893"]},
      {"id": "test_1", "question": "which city is on the west coast of norway", "golden_answers": ["Bergen"]},
  ])
  _write_jsonl(tmp_path / "hotpotqa" / "dev.jsonl", [
      {"_id": "5a8b", "question": "In which city is the museum holding Munch's painting?", "answer": "Oslo",
       "level": "hard"},
  ])
  return tmp_path


def test_loader_reads_real_schema_files(real_dir):
  env = SearchQAEnv(data_dir=str(real_dir))
  assert env.tasks("test", "easy") == ["nq/0", "nq/1"]
  assert env.tasks("train") == ["nq/2"]
  assert env.tasks("test", "hard") == ["hotpotqa/0"]
  env.reset("nq/2")
  step = env.step("<search>capital of norway</search>")
  assert "Doc 1(Title: Oslo) Oslo is the capital of Norway." in step.observation.text
  assert env.step("<answer>Christiania</answer>").success  # any gold answer counts
  env.reset("nq/0")
  found = env.step("<search>scream painted</search>").observation.text
  assert "(Title: Edvard Munch) Edvard Munch painted" in found
  rate, _ = env_checks.expert_success_rate(env, "test", "all")
  assert rate == 1.0


def test_real_corpus_index_is_cached_and_reused(real_dir, monkeypatch):
  import bm25s

  docs, _ = load(str(real_dir))
  cache, corpus = str(real_dir / ".bm25s_index"), str(real_dir / "corpus.jsonl")
  built = BM25Index(docs, cache, source=corpus)
  assert (real_dir / ".bm25s_index" / "params.index.json").exists()
  monkeypatch.setattr(bm25s.BM25, "index", lambda *a, **k: pytest.fail("the cached index was rebuilt"))
  loaded = BM25Index(docs, cache, source=corpus)
  for query in ["capital of norway", "scream museum", "west coast city", "painted 1893"]:
    assert loaded.search(query, 3) == built.search(query, 3)


def test_loader_is_found_through_the_environment_variable(real_dir, monkeypatch):
  monkeypatch.setenv("SEARCHQA_DATA", str(real_dir))
  assert envs.make("searchqa").tasks("test", "hard") == ["hotpotqa/0"]


def test_loader_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
    SearchQAEnv(data_dir=str(tmp_path))
  _write_jsonl(tmp_path / "corpus.jsonl", [{"id": "0", "title": "A", "text": "a"}])
  with pytest.raises(FileNotFoundError, match="question files"):
    SearchQAEnv(data_dir=str(tmp_path))
  _write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "label": "x"}])
  with pytest.raises(ValueError, match="golden_answers"):
    SearchQAEnv(data_dir=str(tmp_path))
