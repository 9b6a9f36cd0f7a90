"""scripts/bench_train.py at a tiny size: every part runs and the JSON holds what the results page quotes.

No timing assertions (timings on a shared machine prove nothing); the counts are checked against the examples."""

from __future__ import annotations

import json
import re

from conftest import ROOT, load_script

TINY = ["--preset", "tiny", "--steps", "2", "--batch", "3", "--rounds", "1", "--threads", "1", "--max-length", "300",
        "--row-tokens", "600", "--loss-vocab", "300", "--loss-tokens", "32", "--accumulate", "2", "--micro-seq", "16"]


def test_every_part_runs_and_reports_what_the_results_page_quotes(tmp_path):
    bench = load_script("bench_train")
    path = tmp_path / "bench_train.json"
    assert bench.main([*TINY, "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert {"commit", "date", "machine", "torch", "transformers", "peft"} <= set(results["setup"])
    args = bench.parse_args(TINY)
    examples = bench.example_lengths(args)
    packing = results["packing"]
    assert packing["examples"] == len(examples) == 6 and packing["tokens"] == sum(e.total for e in examples)
    for name in ("padded", "packed", "trainer_peft"):
        assert packing[name]["tokens_per_s"] > 0 and packing[name]["peak_bytes"] > 0, name
    assert packing["padded"]["batches"] == 2
    assert packing["padded"]["positions"] >= packing["tokens"] and packing["packed"]["positions"] >= packing["tokens"]
    assert results["loss"]["chunked"]["peak_over_plain"] > 0 and results["loss"]["plain"]["peak_over_plain"] == 1.0
    assert results["dora"]["lora"]["over_lora"] == 1.0 and results["dora"]["accumulate"] == 2


def test_packed_batches_hold_the_padded_batches_examples_in_rows_of_the_budget():
    bench = load_script("bench_train")
    args = bench.parse_args(TINY)
    rows = bench.encode(bench.example_lengths(args), args.vocab, args.seed)
    groups = bench.packed_groups(rows, args)
    assert sorted(i for group in groups for i in group) == list(range(len(rows)))
    for group in groups:
        batch = bench.packed_batch([rows[i] for i in group], args.row_tokens, "cpu")
        assert batch["packed_tokens"] == sum(len(rows[i][0]) for i in group)
        assert int((batch["labels"] != -100).sum()) == sum(sum(t != -100 for t in rows[i][1][1:]) for i in group)


def test_lengths_measured_from_a_llava_file_and_given_ones_and_bad_files_named(tmp_path, capsys):
    """--llava-json: each record's turns tokenized, 576 visual tokens an image, the gpt turns supervised; --lengths:
    triples as given; a malformed file is a one-line error naming the file and entry, not a traceback."""
    from transformers import AutoTokenizer

    bench = load_script("bench_train")
    lengths = bench.mixes
    tokenizer = str(ROOT / "configs" / "tiny" / "tokenizer")
    records = [{"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                               {"from": "gpt", "value": "red"}]},
               {"id": "b", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "hi"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    measured = sorted(lengths.measured(tmp_path / "llava.json", tokenizer, 2, 2048, seed=0), key=lambda e: e.visual)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    count = [len(tok(turn["value"], add_special_tokens=False)["input_ids"]) for r in records
             for turn in r["conversations"]]
    assert measured == [lengths.ExampleLength(0, count[2] + count[3], count[3]),
                        lengths.ExampleLength(576, count[0] + count[1], count[1])]

    (tmp_path / "given.json").write_text(json.dumps([[576, 40, 10], [0, 300, 200]]))
    assert lengths.given(tmp_path / "given.json") == [lengths.ExampleLength(576, 40, 10),
                                                       lengths.ExampleLength(0, 300, 200)]
    bad = [("--lengths", json.dumps([[576, 40, 50]]), r"given\.json#0: \[576, 40, 50\] is not"),
           ("--lengths", "[1, 2", r"given\.json: Expecting"),
           ("--llava-json", json.dumps([{"id": "c"}]), r"llava\.json#0: a record needs conversations")]
    for option, content, message in bad:
        path = tmp_path / ("given.json" if option == "--lengths" else "llava.json")
        path.write_text(content)
        extra = ["--tokenizer", tokenizer] if option == "--llava-json" else []
        assert bench.main([*TINY, option, str(path), *extra]) == 2
        assert re.search(message, capsys.readouterr().err)
