"""Live traffic between variants: the weighted split of requests that name no variant, and shadow traffic."""
