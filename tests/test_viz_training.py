import pytest

from energymask.viz import plot_training_log, read_metrics_csv

CSV = """epoch,step,ersm/model.layer2/keep_ratio,train_loss,val_acc
0,9,0.9,1.2,
0,9,,,0.5
1,19,0.7,0.8,
1,19,,,0.8
"""


def test_read_metrics_csv(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    data = read_metrics_csv(p)
    assert data["val_acc"] == [(9.0, 0.5), (19.0, 0.8)]
    assert data["ersm/model.layer2/keep_ratio"] == [(9.0, 0.9), (19.0, 0.7)]


def test_plot_training_log(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    fig, axes = plot_training_log(p)
    assert axes.shape == (1, 2)
    assert axes[0, 0].get_legend().get_texts()[0].get_text() == "ersm/model.layer2/keep_ratio"
    assert list(axes[0, 1].get_lines()[0].get_ydata()) == [0.5, 0.8]
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0


def test_plot_training_log_errors(tmp_path):
    with pytest.raises(ValueError, match="is missing"):
        plot_training_log(tmp_path / "none.csv")
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    with pytest.raises(ValueError, match="'f1' matches none"):
        plot_training_log(p, metrics=("f1",))
