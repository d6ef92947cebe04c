"""Teacher zoos: the on-disk format, building, importing the authors' format, and inspection."""

from dfmeta.zoo.format import Teacher, Zoo, load_zoo, save_teacher, write_manifest

__all__ = ["Teacher", "Zoo", "load_zoo", "save_teacher", "write_manifest"]
