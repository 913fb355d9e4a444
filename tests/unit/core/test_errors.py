"""The command-line wrapper: bad input is one line naming what is wrong, exit code 2, no traceback."""

import pandas as pd
import pytest

from knowsubnet.core.errors import InputError, cli_entry


@pytest.mark.parametrize(
    "fail, line",
    [
        (lambda tmp: open(tmp / "absent.json"), "absent.json: No such file or directory"),
        # pyarrow's FileNotFoundError names the path in its message only
        (lambda tmp: pd.read_parquet(tmp / "absent.parquet"), "absent.parquet"),
        (lambda tmp: (_ for _ in ()).throw(InputError("params key 'train.steps': expected > 0")), "train.steps"),
    ],
)
def test_bad_input_is_one_line_naming_it_and_exit_code_2(fail, line, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(lambda: fail(tmp_path))()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and line in err
    assert "None" not in err
