"""An 8-10-8-1 binary classifier (the shape of the classic 8-feature diabetes network) on
a seeded synthetic task whose classes are not linearly separable."""

import numpy as np

from mpinn import Dense, Sequential
from mpinn.data import Dataset, train_test_split


def make_task(samples=2000, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 8)).astype(np.float32)
    score = x[:, 0] * x[:, 1] + x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.3 * x[:, 4]
    return Dataset(x, (score > -0.5).astype(np.float32))


def main(epochs=40, seed=0, verbose=0):
    x, y = make_task(seed=seed)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=seed)
    model = Sequential([
        Dense(10, activation="relu", input_shape=(8,)),
        Dense(8, activation="relu"),
        Dense(1, activation="sigmoid"),
    ], seed=seed)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose,
                        validation_split=0.1)
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return {"model": model, "history": history, "test_accuracy": accuracy}


if __name__ == "__main__":
    main(verbose=2)
