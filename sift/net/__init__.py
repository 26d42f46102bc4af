"""asyncio glue over the sans-IO protocol: authenticated channels with request ids and timeouts."""
