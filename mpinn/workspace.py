"""Work arrays reused from step to step, so the training loop allocates nothing."""


class Workspace:
    """Named (rows, cols) arrays; a request for more rows than held grows the array, and a
    request for fewer returns a leading slice (still contiguous)."""

    def __init__(self, xp, dtype):
        self.xp, self.dtype = xp, dtype
        self._arrays: dict = {}

    def get(self, key: str, rows: int, cols: int):
        array = self._arrays.get(key)
        if array is None or array.shape[0] < rows:
            array = self.xp.empty((rows, cols), dtype=self.dtype)
            self._arrays[key] = array
        return array[:rows]
