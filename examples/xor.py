"""XOR: the smallest problem a linear model cannot solve; a sigmoid network learns it."""

import numpy as np

import mpinn
from mpinn import Dense, Sequential
from mpinn.data import make_xor


def main(epochs=2000, seed=0, verbose=0):
    x, y = make_xor()
    model = Sequential([
        Dense(4, activation="sigmoid", input_shape=(2,)),
        Dense(1, activation="sigmoid"),
    ], seed=seed)
    model.compile(optimizer=mpinn.SGD(learning_rate=1.0, momentum=0.9),
                  loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=epochs, verbose=verbose)
    predictions = model.predict(x)
    for inputs, output in zip(x, predictions, strict=True):
        print(f"{inputs.astype(int)} -> {output[0]:.3f}")
    return {"model": model, "history": history,
            "predicted": (predictions > 0.5).astype(int).ravel(),
            "expected": np.asarray(y, dtype=int).ravel()}


if __name__ == "__main__":
    main()
