class PathStats: pass
