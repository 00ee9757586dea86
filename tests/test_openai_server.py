"""The OpenAI-compatible endpoints through the official `openai` client on localhost: completions
equal jaxscale's own generation, echo logprobs equal the eval loss's per-token terms, every prompt
form, streaming, and OpenAI's error JSON with the right status."""

import threading
import time

import httpx
import jax
import numpy as np
import openai
import optax
import pytest

from jaxscale.inference import backends, sampling, server
from tests import saved_runs

MODEL_ID = 'tiny-bytes'
LIMITS = dict(max_prompt_tokens=64, max_new_tokens=16)


@pytest.fixture(scope='module')
def byte_workdir(tmp_path_factory):
  config = saved_runs.family_config('transformer', **{'dataset.seq_len': 16})
  config.model.vocab_size = 256  # Byte tokens: prompts and answers are text.
  # Weights well off their init, so the next-token distributions are far from flat.
  return saved_runs.save_run(tmp_path_factory.mktemp('lm'), config, perturb=0.3)


@pytest.fixture(scope='module')
def model(byte_workdir):
  return sampling.restore_model(byte_workdir)[0]


@pytest.fixture(scope='module')
def url(byte_workdir):
  backend = backends.from_workdir(byte_workdir, **LIMITS)
  with server.running_server(server.build_app(backend, max_batch=4, model_id=MODEL_ID)) as base:
    yield base


@pytest.fixture(scope='module')
def client(url):
  return openai.OpenAI(base_url=f'{url}/v1', api_key='unused', max_retries=0, timeout=120)


def _greedy(model, prompt_ids, max_new_tokens):
  new = sampling.generate(model, np.asarray(prompt_ids, np.int32), max_new_tokens,
                          stop_tokens=(0,))
  return sampling.trim_at_stop(new, (0,))


def test_models_lists_the_served_run(client):
  assert [m.id for m in client.models.list().data] == [MODEL_ID]
  assert client.models.retrieve(MODEL_ID).owned_by == 'jaxscale'


def test_completions_of_every_prompt_form_equal_direct_generation(client, model):
  texts = ['def f(x):', 'import os\n']
  ids = [sampling.encode_bytes(t).tolist() for t in texts]
  expected = [sampling.decode_bytes(_greedy(model, i, 8)) for i in ids]
  for prompt in (texts, ids):  # A list of strings; a list of token-id lists.
    result = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8,
                                       temperature=0)
    assert [c.text for c in sorted(result.choices, key=lambda c: c.index)] == expected
    assert result.usage.prompt_tokens == sum(map(len, ids))
  for prompt in (texts[0], ids[0]):  # One string; one token-id list.
    result = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8,
                                       temperature=0)
    assert [c.text for c in result.choices] == expected[:1]
  # Sampling: prompt i draws with fold_in(key(seed), i), as sampling.generate's row i does.
  result = client.completions.create(model=MODEL_ID, prompt=texts, max_tokens=8,
                                     temperature=0.9, top_p=0.8, seed=11)
  direct = sampling.generate(model, [np.asarray(i, np.int32) for i in ids], 8, temperature=0.9,
                             top_p=0.8, rng=jax.random.key(11), stop_tokens=(0,))
  assert [c.text for c in result.choices] == [
      sampling.decode_bytes(sampling.trim_at_stop(row, (0,))) for row in direct]


def test_stop_strings_end_the_text(client, model):
  prompt = 'class A:\n    def'
  full = sampling.decode_bytes(_greedy(model, sampling.encode_bytes(prompt), 16))
  stop = full[3:5]  # Two characters the greedy text really holds.
  result = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16,
                                     temperature=0, stop=[stop])
  assert result.choices[0].text == full[:full.index(stop)]
  assert result.choices[0].finish_reason == 'stop'


@pytest.mark.parametrize('max_tokens', [0, 1])
def test_echo_logprobs_equal_the_eval_steps_per_token_losses(client, model, max_tokens):
  tokens = sampling.encode_bytes('import sys\nprint(sys.argv)\n')
  result = client.completions.create(model=MODEL_ID, prompt=[tokens.tolist()], echo=True,
                                     logprobs=1, max_tokens=max_tokens, temperature=0)
  logprobs = result.choices[0].logprobs
  assert logprobs.token_logprobs[0] is None
  assert len(logprobs.token_logprobs) == len(tokens) + max_tokens
  # The eval step's per-token terms: the same forward pass and cross-entropy.
  logits = model(tokens[None, :-1])
  losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[None, 1:]))
  np.testing.assert_allclose(-np.asarray(logprobs.token_logprobs[1:len(tokens)]), losses[0],
                             rtol=1e-5, atol=1e-5)
  if max_tokens:  # The greedy token, its log-probability the largest after the whole prompt.
    last = np.asarray(jax.nn.log_softmax(model(tokens[None])[0, -1]))
    np.testing.assert_allclose(logprobs.token_logprobs[-1], last.max(), rtol=1e-5, atol=1e-5)
    assert list(logprobs.top_logprobs[-1].values()) == [logprobs.token_logprobs[-1]]
  assert result.choices[0].text.startswith('import sys\n')


def test_streaming_sends_the_same_text_as_events(client):
  kwargs = dict(model=MODEL_ID, prompt='def main():\n', max_tokens=12, temperature=0)
  whole = client.completions.create(**kwargs).choices[0]
  chunks = list(client.completions.create(stream=True, **kwargs))
  assert len(chunks) >= 2
  assert ''.join(c.choices[0].text for c in chunks) == whole.text
  assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_bad_fields_and_unknown_names_get_openai_errors(client, url):
  with pytest.raises(openai.BadRequestError) as error:
    client.completions.create(model=MODEL_ID, prompt='x', max_tokens=-1)
  assert error.value.status_code == 400 and error.value.body['param'] == 'max_tokens'
  with pytest.raises(openai.BadRequestError) as error:
    client.completions.create(model=MODEL_ID, prompt='x', max_tokens=17)
  assert 'at most 16' in error.value.body['message']
  with pytest.raises(openai.BadRequestError) as error:
    client.completions.create(model=MODEL_ID, prompt=[[1, 300]], max_tokens=2)
  assert error.value.body['param'] == 'prompt'
  with pytest.raises(openai.NotFoundError) as error:
    client.completions.create(model='gpt-4', prompt='x', max_tokens=2)
  assert error.value.body['code'] == 'model_not_found'
  missing = httpx.get(f'{url}/v1/engines')
  assert missing.status_code == 404 and missing.json()['error']['type'] == 'not_found_error'
  assert client.completions.create(model=MODEL_ID, prompt='x', max_tokens=2).choices


def test_the_tokenizer_endpoints_round_trip_bytes(url):
  tokens = httpx.post(f'{url}/tokenize', json={'prompt': 'é = 1'}).json()['tokens']
  assert tokens == [195, 169, 32, 61, 32, 49]
  assert httpx.post(f'{url}/detokenize', json={'tokens': tokens}).json()['prompt'] == 'é = 1'
  assert httpx.get(f'{url}/tokenizer_info').json()['eos_token'] == '\x00'


class _Blocking:
  """A backend whose batches wait for `release`, to fill the queue."""

  def __init__(self, inner):
    self.inner, self.started, self.release = inner, threading.Event(), threading.Event()

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def run(self, requests):
    self.started.set()
    self.release.wait(timeout=60)
    return self.inner.run(requests)


def test_a_full_queue_answers_503(byte_workdir):
  backend = _Blocking(backends.from_workdir(byte_workdir, **LIMITS))
  app = server.build_app(backend, max_batch=1, max_queue=1, model_id=MODEL_ID)
  with server.running_server(app) as base:
    client = openai.OpenAI(base_url=f'{base}/v1', api_key='unused', max_retries=0, timeout=120)
    ask = lambda: client.completions.create(model=MODEL_ID, prompt='x', max_tokens=2,
                                            temperature=0)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(ask())) for _ in range(2)]
    threads[0].start()
    assert backend.started.wait(timeout=60)  # The first is running ...
    threads[1].start()
    deadline = time.time() + 60
    while httpx.get(f'{base}/health').json()['waiting'] < 1:  # ... and the second waits.
      assert time.time() < deadline
      time.sleep(0.05)
    with pytest.raises(openai.InternalServerError) as error:
      ask()
    backend.release.set()
    for thread in threads:
      thread.join(timeout=120)
  assert error.value.status_code == 503
  assert error.value.body['type'] == 'server_overloaded' and 'retry' in error.value.body['message']
  assert len(answers) == 2
