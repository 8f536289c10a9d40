"""Tests for resflax.paper against shared/reference/papers.md.

The markdown tables of papers.md are parsed here independently of the module,
so a transcription slip in resflax/paper.py shows up as a mismatch.
"""

import os
import re

import pytest

from resflax.experiment import paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CANDIDATES = [
    os.environ.get('RESFLAX_PAPERS_MD', ''),
    os.path.join(REPO, 'shared', 'reference', 'papers.md'),
    os.path.join(os.path.dirname(REPO), 'shared', 'reference', 'papers.md'),
]


@pytest.fixture(scope='module')
def papers_md():
  for path in _CANDIDATES:
    if path and os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        return f.read()
  pytest.skip('shared/reference/papers.md not available')


def _md_table(text, header_start):
  """Returns the data rows (lists of cells) of the table whose header starts so."""
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if line.startswith(header_start):
      rows = []
      for row in lines[i + 2:]:
        if not row.startswith('|'):
          break
        rows.append([c.strip() for c in row.strip().strip('|').split('|')])
      return rows
  raise AssertionError(f'table {header_start!r} not found in papers.md')


def _num(cell):
  """'**6.43** (6.61±0.16)' -> '6.43'; 'fail' -> 'fail'."""
  cell = cell.replace('*', '').strip()
  return cell.split()[0]


def _as_value(text):
  return 'fail' if text == 'fail' else float(text.rstrip('M'))


def _minus(s):
  return s.replace('\u2212', '-')


def test_cvpr_table6(papers_md):
  rows = _md_table(papers_md, '| net | n | layers | params | error % |')
  assert len(rows) == 6
  for net, n, layers, params, error in rows:
    case = net.lower().replace('-', '')
    assert paper.lookup('cvpr_table6', case) == float(_num(error)), net
    assert paper.lookup('cvpr_table6', case, field='params') == _as_value(params)
    assert paper.lookup('cvpr_table6', case, field='n') == float(n)
    assert paper.lookup('cvpr_table6', case, field='layers') == float(layers)
    assert paper.source('cvpr_table6', case) == '[V]'
  mean, std = re.search(r'\*\*6\.43\*\* \(([\d.]+)±([\d.]+)\)', papers_md).groups()
  assert paper.lookup('cvpr_table6', 'resnet110', field='error_mean') == float(mean)
  assert paper.lookup('cvpr_table6', 'resnet110', field='error_std') == float(std)
  assert 'Highway-19 (2.3M) 7.54 (7.72±0.16)' in papers_md
  assert paper.lookup('cvpr_table6', 'highway19') == 7.54
  assert paper.lookup('cvpr_table6', 'highway19', field='error_mean') == 7.72


def _table1_keys(case, shortcut, residual, remark):
  """Derives resflax's case names from a papers.md Table 1 row."""
  case, shortcut, residual, remark = map(_minus, (case, shortcut, residual, remark))
  if case == 'original':
    return ['original']
  if case == 'constant scaling':
    key = f'scale_{shortcut}'
    return [key if residual == '1' else f'{key}_residual_{residual}']
  if case in ('exclusive gating', 'shortcut-only gating'):
    prefix = 'exclusive_gate' if case.startswith('exclusive') else 'shortcut_gate'
    lo_hi = re.search(r'b_g = (-?\d+)(?: to (-?\d+))?', remark).groups()
    lo = int(lo_hi[0])
    hi = int(lo_hi[1]) if lo_hi[1] is not None else lo
    return [f'{prefix}_b{b}' for b in range(lo, hi - 1, -1)]
  if case.startswith('1×1 conv'):
    return ['conv1x1']
  if case.startswith('dropout'):
    return ['dropout']
  raise AssertionError(f'unexpected Table 1 row {case!r}')


def test_identity_table1(papers_md):
  rows = _md_table(papers_md, '| case | on shortcut | on F | error % | remark |')
  seen = set()
  for case, shortcut, residual, error, remark in rows:
    for key in _table1_keys(case, shortcut, residual, remark):
      expected = _as_value(_num(error))
      assert paper.lookup('identity_table1', key) == expected, key
      assert paper.source('identity_table1', key) == '[V]'
      seen.add(key)
  assert seen == set(paper.cases('identity_table1'))
  assert len(seen) == 16  # b0..b-5 are six separate failing cases


def test_identity_table2(papers_md):
  rows = _md_table(papers_md, '| case (Fig. 4) | ResNet-110 | ResNet-164 |')
  assert len(rows) == 5
  for label, e110, e164 in rows:
    letter = re.match(r'\((\w)\)', label).group(1)
    assert paper.lookup('identity_table2', letter, depth=110) == float(_num(e110))
    assert paper.lookup('identity_table2', letter, depth=164) == float(_num(e164))
  assert paper.lookup('identity_table2', 'full_preact', depth='164') == 5.46


def test_identity_table3(papers_md):
  rows = _md_table(papers_md, '| dataset | net | original unit | pre-act unit |')
  assert len(rows) == 6
  for dataset, net, original, preact in rows:
    case = net.lower().replace('-', '').replace(' with 1layer skip', '_1layer')
    for unit, cell in (('original', original), ('preact', preact)):
      assert paper.lookup(
          'identity_table3', case, dataset=dataset, unit=unit
      ) == float(cell), (dataset, net, unit)


def test_identity_table4(papers_md):
  expected_strings = {
      'ResNet-110 (1.7M) 6.61': ('resnet110', 'cifar10', 6.61),
      'ResNet-1202 (19.4M) 7.93': ('resnet1202', 'cifar10', 7.93),
      'pre-act ResNet-164 (1.7M) 5.46': ('preact_resnet164', 'cifar10', 5.46),
      'pre-act ResNet-1001 (10.2M) 4.92 (4.89±0.14)':
          ('preact_resnet1001', 'cifar10', 4.92),
      'mini-batch 64: **4.62** (4.69±0.20)':
          ('preact_resnet1001_batch64', 'cifar10', 4.62),
      'ResNet-164 [1] 25.16': ('resnet164', 'cifar100', 25.16),
      'ResNet-1001 [1] 27.82': ('resnet1001', 'cifar100', 27.82),
      'pre-act ResNet-164 24.33': ('preact_resnet164', 'cifar100', 24.33),
      'pre-act ResNet-1001 **22.71** (22.68±0.22)':
          ('preact_resnet1001', 'cifar100', 22.71),
  }
  for text, (case, dataset, value) in expected_strings.items():
    assert text in papers_md, text
    assert paper.lookup('identity_table4', case, dataset=dataset) == value
  assert paper.lookup(
      'identity_table4', 'preact_resnet1001', dataset='c10', field='error_std'
  ) == 0.14
  assert paper.lookup(
      'identity_table4', 'preact_resnet1001_batch64', dataset='cifar10',
      field='error_mean') == 4.69
  others = re.search(r'- Other rows: (.*)', papers_md.split('**Table 4')[1]).group(1)
  names = {'NIN': 'nin', 'DSN': 'dsn', 'FitNet': 'fitnet', 'Highway': 'highway',
           'All-CNN': 'all_cnn', 'ELU': 'elu', 'FitResNet-LSUV': 'fitresnet_lsuv'}
  found = re.findall(r'([\w-]+) ([\d.]*\d)/([\d.]*\d)', others)
  assert len(found) == len(names)
  for name, c10, c100 in found:
    assert paper.lookup('identity_table4', names[name], dataset='cifar10') == float(c10)
    assert paper.lookup('identity_table4', names[name], dataset='cifar100') == float(c100)
  assert paper.lookup('identity_table4', 'resnet110', dataset='cifar100') is None


def test_identity_table5(papers_md):
  rows = _md_table(papers_md, '| model | top-1 | top-5 |')
  names = {
      'ResNet-152 original, 224 test crop': 'resnet152_original_224crop',
      'ResNet-152 original': 'resnet152_original',
      'ResNet-152 pre-act': 'resnet152_preact',
      'ResNet-200 original': 'resnet200_original',
      'ResNet-200 pre-act': 'resnet200_preact',
      'ResNet-200 pre-act, scale + aspect-ratio augmentation (fb.resnet.torch)':
          'resnet200_preact_scale_aspect',
      'Inception v3': 'inception_v3',
  }
  assert len(rows) == len(names)
  for model, top1, top5 in rows:
    case = names[model]
    assert paper.lookup('identity_table5', case, metric='top1') == float(_num(top1))
    assert paper.lookup('identity_table5', case, metric='top-5') == float(_num(top5))
  assert '24.6/7.5' in papers_md and '23.6/7.1' in papers_md
  assert paper.lookup('identity_resnet101_imagenet', 'bn_after_addition_224crop',
                      metric='top1') == 24.6


def test_veit_and_anchors(papers_md):
  for text in ('**54 residual modules**', '**5 and 17 modules**', '**0.45%**',
               '**23 of 54 modules**', '**5.96%**', '**6.10%**',
               '19 to 35 modules', '"10–34 layers deep"'):
    assert text in papers_md, text
  veit = lambda case: paper.lookup('veit', case)
  assert veit('num_modules') == 54
  assert (veit('effective_path_min_modules'), veit('effective_path_max_modules')) == (5, 17)
  assert veit('effective_path_fraction_pct') == 0.45
  assert veit('effective_training_sampled_modules') == 23
  assert (veit('effective_training_error'), veit('full_model_error')) == (5.96, 6.10)
  assert (veit('path_length_95pct_min_modules'), veit('path_length_95pct_max_modules')) == (19, 35)
  assert paper.source('veit', 'full_model_error') == '[V2]'
  assert paper.source('veit', 'effective_path_min_layers') == '[V]'

  assert '**5.25%**' in papers_md and '**6.41%**' in papers_md
  assert paper.lookup('stochastic_depth', 'resnet110_sd') == 5.25
  assert paper.lookup('stochastic_depth', 'resnet110_constant') == 6.41
  assert paper.source('stochastic_depth', 'cifar100_sd') == '[U]'

  assert 'WRN-28-10: 4.00 / 19.25' in papers_md
  assert 'WRN-28-10 with dropout: 3.89 / 18.85' in papers_md
  assert paper.lookup('wrn', 'wrn28_10', dataset='cifar10') == 4.00
  assert paper.lookup('wrn', 'wrn28_10', dataset='cifar100') == 19.25
  assert paper.lookup('wrn', 'wrn28_10_dropout', dataset='cifar10') == 3.89
  assert paper.lookup('wrn', 'wrn28_10_dropout', dataset='cifar100') == 18.85


def test_every_entry_has_a_source_tag():
  for name, table in paper.TABLES.items():
    assert table.rows, name
    for case, cells in table.rows.items():
      for key, entry in cells.items():
        assert entry.source in ('[V]', '[V2]', '[U]'), (name, case, key)
        assert isinstance(entry.value, float) or entry.value == 'fail'
        assert len(key) == len(table.columns), (name, case, key)
        for col, v in zip(table.columns, key):
          assert v in table.columns[col], (name, case, key)


def test_lookup_api():
  # Hard-coded spot checks, so something runs even without papers.md.
  assert paper.lookup('cvpr_table6', 'ResNet-110') == 6.43
  assert paper.lookup('identity_table1', 'exclusive_gate_b-3') == 'fail'
  assert paper.lookup('identity_table1', 'shortcut_gate_b-6') == 6.91
  assert paper.lookup('identity_table2', 'e', depth=110) == 6.37
  assert paper.lookup('identity_table1', 'not_in_the_paper') is None
  with pytest.raises(KeyError):
    paper.lookup('no_such_table', 'x')
  with pytest.raises(TypeError):
    paper.lookup('identity_table2', 'e')  # depth is required
  with pytest.raises(TypeError):
    paper.lookup('identity_table1', 'original', depth=110)
  with pytest.raises(ValueError):
    paper.lookup('identity_table2', 'e', depth=56)


def test_format_paper_value():
  assert paper.format_paper_value(8.7) == '8.70'
  assert paper.format_paper_value(23.0, decimals=1) == '23.0'
  assert paper.format_paper_value('fail') == 'fail'
  assert paper.format_paper_value(None) == '—'
  assert paper.format_paper_value(64000.0) == '64000'
  entry = paper.lookup_entry('veit', 'full_model_error')
  assert paper.format_paper_value(entry) == '6.10'
  assert paper.format_paper_value(entry, with_source=True) == '6.10 [V2]'
  assert paper.format_paper_value(
      paper.lookup_entry('cvpr_table6', 'resnet20', field='params')) == '0.27M'
