"""mpinn's built-in strategy plugins, registered under `mpinn.strategies`."""
