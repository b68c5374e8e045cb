"""Linear regression: fit y = 1.5 x + 0.8 + noise with one Dense unit, SGD and MSE, and
read the slope and intercept back from the weights."""

import mpinn
from mpinn import Dense, Sequential
from mpinn.data import make_regression


def main(epochs=50, seed=0, verbose=0):
    x, y = make_regression(samples=1000, slope=1.5, intercept=0.8, noise=0.1, seed=seed)
    model = Sequential([Dense(1, input_shape=(1,))], seed=seed)
    model.compile(optimizer=mpinn.SGD(learning_rate=0.1), loss="mse", metrics=["mae"])
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=verbose)
    kernel, bias = model.get_weights()
    slope, intercept = float(kernel[0, 0]), float(bias[0])
    print(f"slope {slope:.3f} (true 1.5), intercept {intercept:.3f} (true 0.8), "
          f"final mse {history.history['loss'][-1]:.4f}")
    return {"model": model, "history": history, "slope": slope, "intercept": intercept}


if __name__ == "__main__":
    main()
