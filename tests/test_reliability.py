"Crashes leave nothing half-written; the simulator and lake behave under faults."
import os, pytest
from mlsys import world
from mlsys.config import atomic_write
from mlsys.world import read_manifest, read_table, simulate, write_lake, LakeError


def test_crash_mid_landing_keeps_previous_lake(tmp_path, monkeypatch):
    lake = tmp_path/'lake'
    old = write_lake(simulate(seed=1, n_days=8), lake)
    calls = {'n': 0}
    real = world._write_parquet
    def dying(df, path):
        calls['n'] += 1
        if calls['n'] == 5: raise OSError('disk full')
        real(df, path)
    monkeypatch.setattr(world, '_write_parquet', dying)
    with pytest.raises(OSError, match='disk full'): write_lake(simulate(seed=2, n_days=8), lake)
    assert read_manifest(lake)['tables'] == old['tables']
    assert len(read_table(lake, 'transactions')) == old['tables']['transactions']['rows']


def test_atomic_write_crash_keeps_old_file(tmp_path, monkeypatch):
    p = atomic_write(tmp_path/'f.json', 'old')
    def boom(*a): raise OSError('crash before rename')
    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(OSError): atomic_write(p, 'new')
    assert p.read_text() == 'old'


def test_unreadable_lake_is_named(tmp_path):
    lake = tmp_path/'lake'; write_lake(simulate(seed=1, n_days=8), lake)
    part = sorted((lake/'transactions').glob('day=*/part-0.parquet'))[0]
    part.write_bytes(b'not parquet')
    with pytest.raises(LakeError, match="table 'transactions' is unreadable"): read_table(lake, 'transactions')
    with pytest.raises(LakeError, match='no _manifest.json'): read_manifest(tmp_path)


@pytest.mark.parametrize('fault', world.FAULTS)
def test_every_fault_is_in_the_manifest(tmp_path, fault):
    man = write_lake(simulate(seed=3, n_days=8, fault=fault), tmp_path/'lake')
    assert man['fault']['name'] == fault and man['fault']['rows_affected'] > 0 and len(man['fault']['partitions']) == 3
