import torch

from mmalign_runs import checkpoint as ckpt


def _opt():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    return p, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)


def test_partial_checkpoint_is_never_picked_up(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-0000009").mkdir(parents=True)  # a save killed half-way
    (root / ".tmp-step-0000009" / "trainer_state.json").write_text("{")
    assert ckpt.latest_checkpoint(root) is None
    p, opt, sched = _opt()
    gen = torch.Generator().manual_seed(1)
    saved = ckpt.save_checkpoint(root, 3, save_model=lambda d: d.mkdir(), optimizer=opt,
                                 scheduler=sched, data_generator=gen,
                                 trainer_state={"step": 3, "consumed": 12}, keep_last=2)
    assert ckpt.latest_checkpoint(root) == saved
    assert not (root / ".tmp-step-0000009").exists()  # stale temp removed by the next save


def test_keep_last_and_round_trip(tmp_path):
    root = tmp_path / "checkpoints"
    p, opt, sched = _opt()
    gen = torch.Generator().manual_seed(1)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, step, save_model=lambda d: d.mkdir(), optimizer=opt,
                             scheduler=sched, data_generator=gen,
                             trainer_state={"step": step, "consumed": 0}, keep_last=2)
    assert [c.name for c in ckpt.list_checkpoints(root)] == ["step-0000002", "step-0000003"]
    expected_state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    draw = torch.rand(2, generator=gen)
    p2, opt2, sched2 = _opt()
    gen2 = torch.Generator().manual_seed(99)
    loaded = []
    state = ckpt.load_checkpoint(root / "step-0000003", load_model=loaded.append, optimizer=opt2,
                                 scheduler=sched2, data_generator=gen2)
    assert state["step"] == 3 and loaded == [root / "step-0000003" / "model"]
    for k, v in opt2.state_dict()["state"][0].items():
        assert torch.equal(v, expected_state[k])
    assert torch.equal(torch.rand(2, generator=gen2), draw)  # generator restored exactly
    assert not any(f.suffix in (".pt", ".bin", ".pkl") for f in root.rglob("*"))  # no pickles


def _model(d):
    from safetensors.torch import save_file

    d.mkdir()
    save_file({"w": torch.ones(2)}, str(d / "w.safetensors"), metadata={"b": "1", "a": "2"})


def _save(root, step, opt, sched, save_model=_model):
    return ckpt.save_checkpoint(root, step, save_model=save_model, optimizer=opt, scheduler=sched,
                                data_generator=torch.Generator().manual_seed(1), keep_last=5,
                                trainer_state={"step": step, "consumed": 0},
                                identity_json='{"run_id": "r"}')


def test_the_manifest_lists_every_file_with_its_hash(tmp_path):
    import json

    p, opt, sched = _opt()
    saved = _save(tmp_path, 1, opt, sched)
    files = json.loads((saved / "manifest.json").read_text())["files"]
    assert sorted(files) == sorted(str(f.relative_to(saved)) for f in saved.rglob("*")
                                   if f.is_file() and f.name != "manifest.json")
    state, identity = ckpt.verify_checkpoint(saved)
    assert state["step"] == 1 and identity == {"run_id": "r"}
    f = saved / "model" / "w.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")  # same size, another last byte
    assert "model/w.safetensors is damaged" in ckpt.verify_checkpoint(saved)


def test_a_save_that_fails_leaves_no_partial_checkpoint_and_the_previous_one_intact(tmp_path):
    import errno

    import pytest

    from mmalign.errors import ConfigError

    p, opt, sched = _opt()
    first = _save(tmp_path, 1, opt, sched)

    def full_disk(d):
        d.mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(d / "model.safetensors"))

    with pytest.raises(ConfigError, match="disk is full"):
        _save(tmp_path, 2, opt, sched, save_model=full_disk)
    assert [c.name for c in tmp_path.iterdir()] == [first.name]
    assert not isinstance(ckpt.verify_checkpoint(first), str)


def test_a_pickle_is_refused_even_when_the_manifest_lists_it(tmp_path):
    """A planted file with its manifest line edited in (sha256 right): still never loaded."""
    import hashlib
    import json

    import pytest

    from mmalign.errors import ConfigError

    p, opt, sched = _opt()
    saved = _save(tmp_path, 1, opt, sched)
    planted = saved / "model" / "pytorch_model.bin"
    planted.write_bytes(b"\x80\x04K\x01.")  # pickle of the integer 1
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["model/pytorch_model.bin"] = hashlib.sha256(planted.read_bytes()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="pytorch_model.bin: mmalign loads only safetensors and JSON"):
        ckpt.verify_checkpoint(saved)


def test_a_kill_while_pruning_leaves_no_step_husk(tmp_path, monkeypatch):
    """keep_last renames an old checkpoint aside before deleting it: a kill in the middle of the
    deletion leaves a ``.pruned-`` folder (never taken for a checkpoint, removed by the next save),
    not a ``step-N`` holding a few files."""
    root = tmp_path / "ckpts"
    p, opt, sched = _opt()
    for step in (1, 2):
        ckpt.save_checkpoint(root, step, save_model=_model, optimizer=opt, scheduler=sched,
                             data_generator=torch.Generator().manual_seed(1), keep_last=1,
                             trainer_state={"step": step, "consumed": 0}, identity_json='{"run_id": "r"}')
    real_rmtree = ckpt.shutil.rmtree

    def killed_midway(path, ignore_errors=False):  # deletes one file, then "dies"
        if ".pruned-" in str(path):
            next(f for f in sorted(path.rglob("*")) if f.is_file()).unlink()
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    try:
        ckpt.save_checkpoint(root, 3, save_model=_model, optimizer=opt, scheduler=sched,
                             data_generator=torch.Generator().manual_seed(1), keep_last=1,
                             trainer_state={"step": 3, "consumed": 0}, identity_json='{"run_id": "r"}')
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert sorted(p.name for p in root.iterdir()) == [".pruned-step-0000002", "step-0000003"]
    assert [c.name for c in ckpt.list_checkpoints(root)] == ["step-0000003"]
    _save(root, 4, opt, sched)
    assert not (root / ".pruned-step-0000002").exists()
