"""Data-parallel training from a Python script: the same script runs alone or under mpirun.

    python examples/data_parallel.py                        # one process
    mpirun -n 2 python examples/data_parallel.py             # allreduce over 2 ranks
    mpirun -n 3 python examples/data_parallel.py --strategy ps --staleness 2

Every rank runs the whole script on the same data; `fit(strategy=...)` gives each rank its
shard of every global batch and keeps the ranks' models equal. Rank 0 alone prints.
"""

import argparse

import mpinn
from mpinn import Dense, Sequential
from mpinn.data import load_digits, train_test_split


def main(strategy="allreduce", staleness=None, epochs=10, verbose="auto"):
    world = mpinn.world()  # made once; an uncaught exception on any rank ends every rank
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=0)
    model = Sequential([
        Dense(64, activation="relu", input_shape=(64,)),
        Dense(10, activation="softmax"),
    ], seed=0)
    model.compile(optimizer=mpinn.Adam(learning_rate=0.002),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if staleness is not None:  # options need the strategy made by name
        strategy = mpinn.strategy(strategy, staleness=staleness)
    history = model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=verbose,
                        validation_split=0.1, strategy=strategy)
    loss, accuracy = model.evaluate(x_test, y_test)
    if world.rank == 0:
        print(f"{world.size} rank(s): test loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return {"model": model, "history": history, "test_accuracy": accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="allreduce", help="allreduce (default) or ps")
    parser.add_argument("--staleness", type=int, help="ps: pushes a worker may lead by")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.strategy, args.staleness, args.epochs)
