"""lm-evaluation-harness on a run: the registered `jaxscale` model in-process and lm-eval's own
`local-completions` model through the server give the same scores on the shipped offline tasks;
`python -m jaxscale.evaluate` writes lm_eval.json and takes the user's task folder; bad input
gets one clear line."""

import json

import lm_eval
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from jaxscale import evaluate
from jaxscale.inference import backends, lm_eval_model, offline_tasks, server
from tests import saved_runs

TASKS = ['jaxscale_stdlib_next_line', 'jaxscale_stdlib_perplexity']
MAX_LENGTH = 128  # Past the tiny run's seq_len 16 (rotary positions extend): no task row is cut.


@pytest.fixture(scope='module')
def byte_workdir(tmp_path_factory):
  config = saved_runs.family_config('transformer', **{'dataset.seq_len': 16})
  config.model.vocab_size = 256
  return saved_runs.save_run(tmp_path_factory.mktemp('lm'), config, perturb=0.3)


@pytest.fixture(scope='module')
def url(byte_workdir):
  backend = backends.from_workdir(byte_workdir, max_prompt_tokens=MAX_LENGTH + 2,
                                  max_new_tokens=16)
  with server.running_server(server.build_app(backend, max_batch=8, model_id='tiny')) as base:
    yield base


def _server_model_args(url):
  # Two more tokens of length: lm-eval's API models keep one for the generated token and one
  # for the rolling windows' context, so the rows match the in-process model's.
  return (f'model=tiny,base_url={url}/v1/completions,tokenizer_backend=remote,'
          f'max_length={MAX_LENGTH + 2},batch_size=8')


@pytest.mark.slow
def test_in_process_and_through_the_server_give_equal_scores(byte_workdir, url):
  manager = lm_eval_model.task_manager()
  in_process = lm_eval.simple_evaluate(
      model='jaxscale', model_args=f'workdir={byte_workdir},max_length={MAX_LENGTH},batch_size=8',
      tasks=TASKS, task_manager=manager, limit=6)
  served = lm_eval.simple_evaluate(model='local-completions', model_args=_server_model_args(url),
                                   tasks=TASKS, task_manager=manager, limit=6)
  ours, theirs = (lm_eval_model.metric_rows(r) for r in (in_process, served))
  assert set(ours) == {f'eval/{TASKS[0]}/acc', f'eval/{TASKS[0]}/acc_norm',
                       f'eval/{TASKS[1]}/word_perplexity', f'eval/{TASKS[1]}/byte_perplexity',
                       f'eval/{TASKS[1]}/bits_per_byte'}
  assert set(theirs) == set(ours)
  for key, value in ours.items():
    assert theirs[key] == pytest.approx(value, rel=1e-5), key
  # A near-random model: the per-byte cost is near log2(256) = 8 bits, not a constant.
  assert 4 < ours[f'eval/{TASKS[1]}/bits_per_byte'] < 16
  assert in_process['n-samples'][TASKS[0]]['effective'] == 6


def test_generate_until_in_process_and_through_the_server_agree(byte_workdir, url):
  requests = [Instance('generate_until', {}, (context, {'until': ['\n'], 'max_gen_toks': 12}),
                       idx=0) for context in ('def f(x):\n    return', 'import ')]
  ours = lm_eval_model.JaxscaleLM(workdir=str(byte_workdir), max_length=MAX_LENGTH)
  theirs = get_model('local-completions').create_from_arg_string(_server_model_args(url))
  texts = ours.generate_until(requests)
  assert texts == theirs.generate_until(requests)
  assert all('\n' not in text and len(text) <= 12 for text in texts)  # A byte: one char at most.
  assert any(texts)


def test_evaluate_writes_lm_eval_json_with_shipped_and_user_tasks(byte_workdir, tmp_path, capsys):
  rows = [{'question': f'x = {i}\ny = ', 'options': ['x\n', 'zz\n'], 'answer': 0}
          for i in range(3)]
  data = tmp_path / 'mine.jsonl'
  data.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  tasks_dir = tmp_path / 'tasks'
  tasks_dir.mkdir()
  (tasks_dir / 'mine.yaml').write_text(f"""task: my_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
""")
  code = evaluate.main(['--workdir', str(byte_workdir), '--tasks', f'{TASKS[0]},my_task',
                        '--include_path', str(tasks_dir), '--limit', '3',
                        '--model_args', f'max_length={MAX_LENGTH}'])
  assert code == 0
  written = json.loads((byte_workdir / 'lm_eval.json').read_text())
  assert set(written['results']) == {TASKS[0], 'my_task'}
  assert written['n-samples']['my_task']['effective'] == 3
  printed = json.loads(capsys.readouterr().out)
  assert printed[f'eval/{TASKS[0]}/acc'] == written['results'][TASKS[0]]['acc,none']


@pytest.mark.parametrize('argv, message', [
    (['--tasks', 'no_such_task'], 'Unknown lm-eval task(s) no_such_task'),
    (['--tasks', TASKS[0], '--model_args', 'temperature=2'], 'Unknown jaxscale model_args'),
    (['--tasks', TASKS[0], '--model_args', 'batch_size=-3'], 'batch_size must be a positive'),
    (['--tasks', TASKS[0], '--include_path', '/no/such/dir'], 'is not a folder'),
])
def test_bad_input_gets_one_clear_line(byte_workdir, capsys, argv, message):
  assert evaluate.main(['--workdir', str(byte_workdir), *argv]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and message in err and '\n' not in err


def test_a_workdir_without_a_checkpoint_is_named(byte_workdir, tmp_path, capsys):
  empty = tmp_path / 'run'
  empty.mkdir()
  (empty / 'config.json').write_text((byte_workdir / 'config.json').read_text())
  assert evaluate.main(['--workdir', str(empty), '--tasks', TASKS[0]]) == 2
  assert 'No checkpoint' in capsys.readouterr().err


def test_the_offline_task_data_is_built_deterministically_from_held_out_files(tmp_path):
  files = offline_tasks.held_out_files()
  questions = offline_tasks.next_line_questions(files)
  assert questions == offline_tasks.next_line_questions(files)
  assert len(questions) == offline_tasks.NUM_QUESTIONS
  texts = dict(files)
  for question in questions[:50]:
    answer = question['choices'][question['label']]
    assert question['context'] + answer in texts[question['source']] + '\n'
    assert len(set(question['choices'])) == 4
  shipped = offline_tasks.TASKS_DIR / 'stdlib_next_line.jsonl'
  rows = [json.loads(line) for line in shipped.read_text().splitlines()]
  # Built on another Python version the sources differ; the shipped ones are all held out.
  assert all(offline_tasks.python_stdlib.is_validation(row['source']) for row in rows)
  assert len(rows) == offline_tasks.NUM_QUESTIONS and {r['label'] for r in rows} == {0, 1, 2, 3}
