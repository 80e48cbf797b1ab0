"""Small helpers shared by every part of fairstamp (atomic files, locks, progress, versions)."""
