"""A few training steps of TRL's SFTTrainer, DPOTrainer and KTOTrainer on exported shards, loaded as
a user loads them (`load_dataset("parquet", data_dir=...)`), with a tiny random Llama built here."""

from __future__ import annotations

import math

import pytest

from trajforge.store.export import ExportSpec, export
from trajforge.store.lake import Lake

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, tokenizer) of a 2-layer random Llama: the one model every trainer test shares."""
    import torch
    from transformers import AutoTokenizer

    from trajforge.inference.tiny import build_tiny_model

    torch.set_num_threads(1)  # 2 shared cores: more threads make it slower here
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return folder, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def shards(toy_lake, tmp_path_factory):
    """Folders of the sft, dpo and kto exports of the toy lake."""
    root = tmp_path_factory.mktemp("shards")
    with Lake.open(toy_lake, read_only=True) as lake:
        for fmt in ("sft", "dpo", "kto"):
            export(lake, root / fmt, ExportSpec(format=fmt))
    return root


def _args(config_cls, tmp_path, **kw):
    return config_cls(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        **kw,
    )


def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _trained(trainer) -> None:
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)


def test_sft_trainer_trains_on_the_sft_shards(tiny, shards, tmp_path):
    folder, tok = tiny
    ds = datasets.load_dataset("parquet", data_dir=str(shards / "sft" / "data"), split="train")
    args = _args(trl.SFTConfig, tmp_path, max_length=512)
    _trained(trl.SFTTrainer(model=_model(folder), args=args, train_dataset=ds, processing_class=tok))


def test_dpo_trainer_trains_on_the_dpo_shards(tiny, shards, tmp_path):
    folder, tok = tiny
    ds = datasets.load_dataset("parquet", data_dir=str(shards / "dpo" / "data"), split="train")
    args = _args(trl.DPOConfig, tmp_path, max_length=512)
    trainer = trl.DPOTrainer(
        model=_model(folder), ref_model=_model(folder), args=args, train_dataset=ds, processing_class=tok
    )
    _trained(trainer)


def test_kto_trainer_trains_on_the_kto_shards(tiny, shards, tmp_path):
    folder, tok = tiny
    ds = datasets.load_dataset("parquet", data_dir=str(shards / "kto" / "data"), split="train")
    assert set(ds["label"]) == {True, False}
    args = _args(trl.KTOConfig, tmp_path, max_length=512)
    trainer = trl.KTOTrainer(
        model=_model(folder), ref_model=_model(folder), args=args, train_dataset=ds, processing_class=tok
    )
    _trained(trainer)
