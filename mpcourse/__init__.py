"""mpcourse: the reference implementation behind the mixed precision course.

Each module backs one chapter of ``course/``; see README.md for the map.
"""

__version__ = "0.1.0"
