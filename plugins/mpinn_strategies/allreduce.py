"""Synchronous data parallelism: every rank trains its shard of each global batch, the
gradients are averaged with one Allreduce on the flat gradient buffer, and every rank
applies the same optimizer step, so all ranks hold the same parameters throughout."""

from mpinn.dist import Strategy


class AllreduceStrategy(Strategy):
    name = "allreduce"

    def setup(self, model):
        super().setup(model)
        self.arrays.broadcast(model.params.data, root=0)

    def apply_gradients(self, model, local_samples, global_samples):
        self.exchange(model)
        model.optimizer.apply(model.params)

    def exchange(self, model):
        """Sum every rank's share of the mean gradient: one in-place Allreduce."""
        if self.size > 1:
            self.arrays.allreduce_sum(model.params.grad)
