"""The studio server: HTTP front ends (native API, A1111's /sdapi/v1, web UI) over one job queue.

    jobs.py     the contract: `JobService` and the Job/JobEvent/ImageRecord types front ends use
    queue.py    `JobQueue`, the SQLite-backed JobService whose worker thread owns the Engine
    gallery.py  its storage: the jobs table, the image index and the PNG files under outputs/

Nothing is imported here, so importing a front end's types never loads torch.
"""
