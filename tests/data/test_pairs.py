"""Sentence-pair data preparation (llmkit/data/pairs.py): settings that shape how it runs."""

import datasets
from transformers import AutoTokenizer

from llmkit.config import load_config
from llmkit.data.pairs import prepare_pair_data
from llmkit.recipes.finetune import FinetuneConfig


def test_preprocessing_num_workers_reaches_the_tokenization(tmp_path, tiny_config, tokenizer_dir, monkeypatch):
    """data.preprocessing_num_workers tokenizes the pairs in that many processes (as for every other task), and
    the pairs come out the same as with one process."""
    rows = "\n".join(f"a good film number {i},a fine film {i},{i % 5 / 4}" for i in range(40))
    (tmp_path / "pairs.csv").write_text("anchor,positive,score\n" + rows + "\n")
    calls = []
    original = datasets.Dataset.map

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("num_proc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", spy)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = {}
    for workers in (None, 2):
        raw = dict(tiny_config, data={"train_file": str(tmp_path / "pairs.csv"), "text_column": "anchor",
                                      "text_pair_column": "positive", "max_length": 32, "cache": False,
                                      "preprocessing_num_workers": workers})
        out[workers] = prepare_pair_data(load_config(FinetuneConfig, None, data=raw).data, tokenizer, seed=0)
    assert calls[-1] == 2 and None in calls
    assert out[2].splits["train"].to_dict() == out[None].splits["train"].to_dict()
