import pytest

from energymask.viz import matching_metrics, plot_training_log, read_metrics_csv

# Two epochs of 10 steps: training rows every 5 steps, validation at each epoch's end.
CSV = """\
epoch,step,ersm/model.layer2/keep_ratio,train_loss,val_acc,val_loss,test_acc,\
val_ersm/model.layer2/keep_ratio
0,4,0.9,1.2,,,,
0,9,,,0.5,1.1,,0.8
1,14,0.7,0.8,,,,
1,19,,,0.8,0.6,,
2,20,,,,,0.81,
"""


def _write(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    return p


def test_read_metrics_csv_in_epochs(tmp_path):
    data = read_metrics_csv(_write(tmp_path))
    assert data["val_acc"] == [(1.0, 0.5), (2.0, 0.8)]
    assert data["ersm/model.layer2/keep_ratio"] == [(0.5, 0.9), (1.5, 0.7)]
    assert data["val_ersm/model.layer2/keep_ratio"] == [(1.0, 0.8)]


def test_read_metrics_csv_without_epochs(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("loss\n1.0\n0.5\n")
    assert read_metrics_csv(p) == {"loss": [(0.0, 1.0), (1.0, 0.5)]}


def test_plot_training_log(tmp_path):
    fig, axes = plot_training_log(_write(tmp_path))
    assert axes.shape == (1, 3)
    loss, keep, val = axes[0]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "val"]
    assert loss.get_ylabel() == "cross-entropy loss" and loss.get_xlabel() == "epoch"
    assert keep.get_legend().get_texts()[0].get_text() == "train layer2"
    assert [t.get_text() for t in keep.get_legend().get_texts()] == ["train layer2",
                                                                      "val layer2"]
    assert keep.get_ylim() == (0, 1.02)
    assert list(val.get_lines()[0].get_xdata()) == [1.0, 2.0]
    assert list(val.get_lines()[0].get_ydata()) == [0.5, 0.8]
    assert val.get_ylabel() == "validation accuracy"
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    _, axes = plot_training_log(_write(tmp_path), metrics=("test_acc",))
    assert list(axes[0, 0].get_lines()[0].get_ydata()) == [0.81]


def test_plot_training_log_errors(tmp_path):
    with pytest.raises(ValueError, match="is missing"):
        plot_training_log(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="'f1' matches none"):
        plot_training_log(_write(tmp_path), metrics=("f1",))
    with pytest.raises(ValueError, match="'test' matches none"):
        plot_training_log(_write(tmp_path), metrics=("test",))  # test_acc: by full name only


def test_matching_metrics_keeps_those_the_log_has(tmp_path):
    path = _write(tmp_path)
    columns = read_metrics_csv(path)
    wanted = ("loss", "acc", "keep_ratio", "hard_sparsity", "drop_rate")
    found = matching_metrics(path, wanted)
    assert set(found) < set(wanted) and found == tuple(m for m in wanted if m in found)
    for m in wanted:  # kept exactly when some column ends in it
        assert (m in found) == any(k == m or k.endswith(("_" + m, "/" + m)) for k in columns)
    plot_training_log(path, found)  # draws every one it kept
