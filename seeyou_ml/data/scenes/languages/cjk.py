"""Chinese and Japanese.

Chinese counts objects with the classifier 个 (一个红色的圆形, 图中有两个图形 — 两, not 二, before a classifier)
and puts a relation before the noun it modifies: 蓝色正方形左边的红色圆形 ("the red circle left of the blue
square"). Japanese attributive adjectives precede the noun (大きな赤い円, 緑の星), objects are counted with つ,
and a relation is a relative clause: 青い正方形の左にある赤い円.
"""

from __future__ import annotations

from ..scene import Mention, Phrase
from .base import UnspacedLanguage, join_list


class Chinese(UnspacedLanguage):
    code = "zh"
    FUNCTION_WORDS = ("一个", "图中有", "个", "图形", "依次是", "的", "和", "、", "，", "。", "一张", "有", "图片", "最大的", "是")
    NOUNS = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字形", "diamond": "菱形"}
    COLOURS = {
        "red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色",
        "blue": "蓝色", "purple": "紫色", "brown": "棕色", "black": "黑色",
    }
    SIZES = {"small": "小", "large": "大"}
    ORDER = {"lr": "从左到右", "rl": "从右到左", "tb": "从上到下", "bt": "从下到上"}
    NUMBERS = {2: "两", 3: "三", 4: "四"}
    RELATION = {"left_of": "左边", "right_of": "右边", "above": "上方", "below": "下方"}

    def _described(self, mention: Mention, particle: str) -> str:
        """Colour, then size and noun: 红色的大圆形 with `particle` "的", 红色大圆形 without."""
        size = self.SIZES[mention.size] if mention.size else ""
        colour = self.COLOURS[mention.colour] + particle if mention.colour else ""
        return colour + size + self.NOUNS[mention.shape]

    def indefinite(self, mention: Mention) -> str:
        return "一个" + self._described(mention, "的")

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self.indefinite(m) for m in mentions], "、", "和")
        if counted:
            return f"图中有{self.NUMBERS[len(mentions)]}个图形，{self.ORDER[order]}依次是{listed}。"
        return f"{self.ORDER[order]}依次是{listed}。"

    def phrase(self, phrase: Phrase) -> str:
        if phrase.relation is None:
            return self._described(phrase.target, "的")
        # One 的 per phrase reads best: the landmark and the target go without their own.
        landmark = self._described(phrase.landmark, "")
        return f"{landmark}{self.RELATION[phrase.relation]}的{self._described(phrase.target, '')}"

    def class_prompts(self) -> dict[str, list[str]]:
        return {
            shape: [f"一个大{noun}", f"一张有大{noun}的图片", f"最大的图形是{noun}"] for shape, noun in self.NOUNS.items()
        }

    def synonyms(self) -> dict[str, list[str]]:
        return {
            "图形": ["形状"], "正方形": ["方形"], "星形": ["五角星"], "十字形": ["十字"], "上方": ["上面"],
            "下方": ["下面"], "左边": ["左侧"], "右边": ["右侧"], "棕色": ["褐色", "咖啡色"],
        }


class Japanese(UnspacedLanguage):
    code = "ja"
    FUNCTION_WORDS = ("図形", "が", "あります", "です", "並んでいます", "の", "にある", "と", "、", "。", "いちばん", "大きい", "がある", "画像", "は")
    NOUNS = {"circle": "円", "square": "正方形", "triangle": "三角形", "star": "星", "cross": "十字", "diamond": "ひし形"}
    COLOURS = {
        "red": "赤い", "orange": "オレンジ色の", "yellow": "黄色い", "green": "緑の",
        "blue": "青い", "purple": "紫の", "brown": "茶色の", "black": "黒い",
    }
    SIZES = {"small": "小さな", "large": "大きな"}
    ORDER = {"lr": "左から順に", "rl": "右から順に", "tb": "上から順に", "bt": "下から順に"}
    NUMBERS = {2: "二つ", 3: "三つ", 4: "四つ"}
    RELATION = {"left_of": "左", "right_of": "右", "above": "上", "below": "下"}

    def indefinite(self, mention: Mention) -> str:
        size = self.SIZES[mention.size] if mention.size else ""
        colour = self.COLOURS[mention.colour] if mention.colour else ""
        return size + colour + self.NOUNS[mention.shape]

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self.indefinite(m) for m in mentions], "、", "と")
        if counted:
            return f"図形が{self.NUMBERS[len(mentions)]}あります。{self.ORDER[order]}、{listed}です。"
        return f"{self.ORDER[order]}、{listed}が並んでいます。"

    def phrase(self, phrase: Phrase) -> str:
        target = self.indefinite(phrase.target)
        if phrase.relation is None:
            return target
        return f"{self.indefinite(phrase.landmark)}の{self.RELATION[phrase.relation]}にある{target}"

    def class_prompts(self) -> dict[str, list[str]]:
        return {
            shape: [f"大きな{noun}", f"大きな{noun}がある画像", f"いちばん大きい図形は{noun}"] for shape, noun in self.NOUNS.items()
        }

    def synonyms(self) -> dict[str, list[str]]:
        return {
            "円": ["丸"], "正方形": ["四角"], "ひし形": ["菱形"], "十字": ["十字形"], "星": ["星形"],
            "図形": ["形"], "大きな": ["大きい"], "小さな": ["小さい"], "並んでいます": ["あります"],
        }
