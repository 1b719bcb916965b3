"""The daemon's asyncio side: transport, user agents, calls, control loop."""
