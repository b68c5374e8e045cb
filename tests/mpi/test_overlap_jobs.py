"""`allreduce` with `overlap`: buckets sent while backward computes, on real MPI."""

import numpy as np
import pytest

from mpinn import checkpoint

from .test_allreduce_jobs import SMALL_JOB


def trained(tmp_path, launch, ranks, name, *settings):
    (tmp_path / f"{name}.toml").write_text(SMALL_JOB.format(directory=tmp_path / name))
    run = launch(ranks, "train", f"{name}.toml", "-q",
                 *[arg for setting in settings for arg in ("--set", setting)])
    assert run.returncode == 0, run.stderr
    return checkpoint.read(tmp_path / name / "final.h5").params


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks, batch, bucket_mb", [(2, 60, 4), (2, 60, 0.001), (3, 718, 0.001)],
                         ids=["2-ranks-a-bucket-a-layer", "2-ranks-tiny-buckets",
                              "3-ranks-ranks-without-samples"])
def test_overlapped_buckets_give_allreduces_parameters(tmp_path, launch, ranks, batch,
                                                       bucket_mb):
    """The last batch of 1437 samples in batches of 718 is 1 sample: two of three ranks
    compute nothing there and still send the same buckets."""
    plain = trained(tmp_path, launch, ranks, "plain", f"training.batch_size={batch}")
    overlapped = trained(tmp_path, launch, ranks, "overlapped", f"training.batch_size={batch}",
                         "strategy.overlap=true", f"strategy.bucket_mb={bucket_mb}")
    for name, value in plain.items():
        if ranks == 2:  # a sum of two is the same whatever the buckets
            np.testing.assert_array_equal(overlapped[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(overlapped[name], value, rtol=1e-9, atol=1e-12,
                                       err_msg=name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings, message", [
    (["strategy.overlap=true", "strategy.compression='float16'"],
     "allreduce: overlap goes with compression 'none' only; received: compression='float16'"),
    (["strategy.overlap='yes'"], "allreduce: overlap must be true or false; received: 'yes'"),
    (["strategy.overlap=true", "strategy.bucket_mb=0"],
     "allreduce: bucket_mb must be a number above 0; received: bucket_mb=0"),
], ids=["with-compression", "not-a-bool", "empty-buckets"])
def test_bad_overlap_settings_are_one_line_and_exit_2_on_every_rank(launch, settings, message):
    run = launch(2, "train", "-q", *[arg for setting in settings for arg in ("--set", setting)])
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
