//! Queues for tasks of one loop: asyncio's `Queue`, `PriorityQueue` and `LifoQueue`.
#![forbid(unsafe_code)]
