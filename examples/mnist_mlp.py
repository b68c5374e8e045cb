"""The MNIST-shaped classic: a 784-64-10 ReLU/softmax MLP, Adam, sparse categorical
cross-entropy, accuracy.

    python examples/mnist_mlp.py                       # embedded digits, upscaled to 28x28
    python examples/mnist_mlp.py --images train-images-idx3-ubyte.gz \
                                 --labels train-labels-idx1-ubyte.gz   # real MNIST files
    mpirun -n 2 python examples/mnist_mlp.py           # one model, data-parallel on 2 ranks
"""

import argparse

import numpy as np

import mpinn
from mpinn import Dense, Sequential
from mpinn.data import load_digits, load_mnist, train_test_split


def digits_as_mnist():
    """The embedded 8x8 digits, each pixel tripled and centred in 28x28, as MNIST is."""
    x, y = load_digits()
    images = np.kron(x.reshape(-1, 8, 8), np.ones((3, 3), dtype=np.float32))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return padded.reshape(len(x), 784), y


def main(images=None, labels=None, epochs=10, seed=0, verbose=2):
    world = mpinn.world()  # first: under mpirun, a failure on any rank ends every rank
    x, y = load_mnist(images, labels) if images else digits_as_mnist()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=seed)
    model = Sequential([
        Dense(64, activation="relu", input_shape=(784,)),
        Dense(10, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer=mpinn.Adam(learning_rate=0.001),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose,
                        validation_split=0.1, strategy="allreduce")  # alone: plain training
    loss, accuracy = model.evaluate(x_test, y_test)
    if world.rank == 0:
        print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return {"model": model, "history": history, "test_accuracy": accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="MNIST images (IDX, optionally .gz)")
    parser.add_argument("--labels", help="MNIST labels (IDX, optionally .gz)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.images, args.labels, args.epochs)
