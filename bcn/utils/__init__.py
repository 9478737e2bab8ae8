"""Support code both adapters share that is not BCN itself: run folders, generated toy
scenes, random-state capture, checkpoint fit checks, the allocator setting."""
