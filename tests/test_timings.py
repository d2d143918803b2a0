"""Per-study time of a workflow run from Snakemake's job benchmark files."""

import pytest

from descentlab.cli import main
from descentlab.timings import DATA_ROW, benchmark_file, markdown_table, per_study, read_job_benchmarks

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path, wall, cpu, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


@pytest.fixture
def results(tmp_path):
    write(tmp_path / "benchmarks/train/sam+mnist1d-mlp-1234abcd.tsv", 10.0, 19.0, 300)
    write(tmp_path / "benchmarks/train/sam+mnist1d-mlp-1234abcd-2of2.tsv", 5.0, 9.0, 310)
    write(tmp_path / "benchmarks/selections/sam/best.tsv", 1.0, 0.5, 100)
    write(tmp_path / "benchmarks/analyses/sam/hessian.tsv", 4.0, 3.5, 200)
    write(tmp_path / "benchmarks/figures/sam/sam-flatness.tsv", 2.0, 1.5, 150)
    write(tmp_path / "benchmarks/train/eos+gaussian-mlp-99.tsv", 3.0, 2.0, 120)
    write(tmp_path / "benchmarks/data/mnist1d-8b7fc65c.tsv", 6.0, 5.0, 90)
    return tmp_path


def test_jobs_are_attributed_to_their_study(results):
    jobs = read_job_benchmarks(results)
    assert len(jobs) == 7
    assert dict(zip(jobs.job, jobs.study))["mnist1d-8b7fc65c"] == DATA_ROW
    table = per_study(jobs).set_index("study")
    assert table.loc["sam", "jobs"] == 5
    assert table.loc["sam", "train_cpu_s"] == pytest.approx(28.0)
    assert table.loc["sam", "cpu_s"] == pytest.approx(19 + 9 + 0.5 + 3.5 + 1.5)
    assert table.loc["sam", "job_wall_s"] == pytest.approx(22.0)
    assert table.loc["sam", "max_rss_mb"] == 310
    assert list(table.index) == ["sam", DATA_ROW, "eos"]  # most CPU first
    assert markdown_table(table.reset_index()).splitlines()[-1] == "| total | 7 | 30 | 40 | 31 | 310 |"


def test_readme_block_is_replaced(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- timings:begin -->\nold\n<!-- timings:end -->\nrest\n")
    assert main(["timings", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| sam | 5 | 28 | 34 | 22 | 310 |" in text and text.endswith("rest\n")


def test_clear_errors(tmp_path, capsys):
    assert main(["timings", str(tmp_path)]) == 2
    assert "no job benchmark files" in capsys.readouterr().err
    bad = tmp_path / "benchmarks/figures/sam/fig.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("not a table\n")
    assert main(["timings", str(tmp_path)]) == 2
    assert "fig.tsv: not a Snakemake benchmark file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown stage 'plots'"):
        benchmark_file("results", "plots", "x")
